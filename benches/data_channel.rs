//! Per-packet cost of the OpenVPN AEAD data channel: sealing a tunnel packet in place
//! (P_DATA_V2), and opening it, for each cipher at a small and a full-size packet.
//!
//!   cargo bench --bench data_channel

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use p2sgw::crypto::AeadAlgorithm;
use p2sgw::proto::openvpn::data::{DataKey, HEADROOM};
use p2sgw::proto::openvpn::keys::{Key2, Role};

fn keys(alg: AeadAlgorithm) -> (DataKey, DataKey) {
    let mut material = [0u8; 256];
    for (i, b) in material.iter_mut().enumerate() {
        *b = i as u8;
    }
    let key2 = Key2::from_ekm(material);
    let server = DataKey::new(1, &key2.direction_keys(alg, Role::Server)).expect("server key");
    let client = DataKey::new(1, &key2.direction_keys(alg, Role::Client)).expect("client key");
    (server, client)
}

fn seal_and_open(c: &mut Criterion) {
    for alg in AeadAlgorithm::ALL {
        let (server, client) = keys(alg);
        let mut group = c.benchmark_group(format!("data_channel/{alg}"));
        for size in [64usize, 1400] {
            group.throughput(Throughput::Bytes(size as u64));
            let mut buf = vec![0x45u8; HEADROOM + size];
            group.bench_with_input(BenchmarkId::new("seal", size), &size, |b, &size| {
                b.iter(|| black_box(server.seal_v2(7, &mut buf, size).expect("seal")))
            });
            // Open needs a fresh sealed packet each time (open decrypts in place).
            let mut sealed = vec![0x45u8; HEADROOM + size];
            let n = client.seal_v2(7, &mut sealed, size).expect("seal");
            let mut work = sealed.clone();
            group.bench_with_input(BenchmarkId::new("open", size), &size, |b, _| {
                b.iter(|| {
                    work.copy_from_slice(&sealed);
                    black_box(server.open(&mut work[..n]).expect("open"))
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, seal_and_open);
criterion_main!(benches);
