//! Per-packet cost of userspace ESP: sealing an inner packet in place and opening it
//! (replay check, decryption, padding check), for each AEAD at a small and a full-size
//! packet, one packet per call and in batches of 32 (an io_uring completion batch).
//! Throughput counts inner-packet bytes, so single and batch figures compare directly.
//!
//!   cargo bench --bench esp

use std::hint::black_box;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use p2sgw::crypto::AeadAlgorithm;
use p2sgw::proto::esp::{
    HEADROOM, InboundSa, MAX_TAILROOM, NEXT_HEADER_IPV4, OpenJob, OutboundSa, SaKey, SealJob, responder_sas,
    split_child_keymat,
};

const BATCH: usize = 32;
const GATEWAY_SPI: u32 = 0xc1a0_0001;
const CLIENT_SPI: u32 = 0xc7e1_0002;

/// The gateway's SAs and the client's sending SA (which makes packets for the gateway
/// to open), from one CHILD SA KEYMAT.
fn sas(algorithm: AeadAlgorithm) -> (InboundSa, OutboundSa, OutboundSa) {
    let keymat: Vec<u8> = (0..=255u8).cycle().take(72).collect();
    let keymat = &keymat[..2 * p2sgw::proto::esp::keymat_len(algorithm)];
    let (gateway_in, gateway_out) = responder_sas(algorithm, keymat, GATEWAY_SPI, CLIENT_SPI).expect("gateway SAs");
    let (initiator_keys, _) = split_child_keymat(algorithm, keymat).expect("split");
    let client_out = OutboundSa::new(GATEWAY_SPI, SaKey::from_keymat(algorithm, initiator_keys).expect("client key"))
        .expect("client SA");
    (gateway_in, gateway_out, client_out)
}

fn buffer(size: usize) -> Vec<u8> {
    vec![0x45u8; HEADROOM + size + MAX_TAILROOM]
}

/// A packet sealed by the client, exactly as long as on the wire.
fn client_packet(client_out: &OutboundSa, size: usize) -> Vec<u8> {
    let mut buf = buffer(size);
    let sealed = client_out.seal(&mut buf, size, NEXT_HEADER_IPV4).expect("seal");
    buf.truncate(sealed.len);
    buf
}

fn seal_and_open(c: &mut Criterion) {
    for algorithm in AeadAlgorithm::ALL {
        let (mut gateway_in, gateway_out, client_out) = sas(algorithm);
        let mut group = c.benchmark_group(format!("esp/{algorithm}"));
        for size in [64usize, 1400] {
            group.throughput(Throughput::Bytes(size as u64));
            let mut buf = buffer(size);
            group.bench_with_input(BenchmarkId::new("seal", size), &size, |b, &size| {
                b.iter(|| black_box(gateway_out.seal(&mut buf, size, NEXT_HEADER_IPV4).expect("seal")))
            });
            // Open needs a fresh packet with a new sequence number each time (it
            // decrypts in place and the replay window refuses repeats): made untimed.
            group.bench_with_input(BenchmarkId::new("open", size), &size, |b, &size| {
                b.iter_batched_ref(
                    || client_packet(&client_out, size),
                    |packet| black_box(gateway_in.open(packet).expect("open")).seq,
                    BatchSize::SmallInput,
                )
            });

            group.throughput(Throughput::Bytes((size * BATCH) as u64));
            let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| buffer(size)).collect();
            let mut jobs: Vec<SealJob> = bufs.iter_mut().map(|b| SealJob::new(b, size, NEXT_HEADER_IPV4)).collect();
            group.bench_with_input(BenchmarkId::new(format!("seal_batch{BATCH}"), size), &size, |b, _| {
                b.iter(|| {
                    gateway_out.seal_batch(&mut jobs);
                    black_box(&jobs[BATCH - 1].outcome);
                })
            });
            group.bench_with_input(BenchmarkId::new(format!("open_batch{BATCH}"), size), &size, |b, &size| {
                b.iter_batched_ref(
                    || (0..BATCH).map(|_| client_packet(&client_out, size)).collect::<Vec<_>>(),
                    |packets| {
                        let mut iter = packets.iter_mut();
                        let mut jobs: [OpenJob; BATCH] =
                            std::array::from_fn(|_| OpenJob::new(iter.next().expect("BATCH packets")));
                        gateway_in.open_batch(&mut jobs);
                        black_box(jobs[BATCH - 1].outcome.clone())
                    },
                    BatchSize::SmallInput,
                )
            });
        }
        group.finish();
    }
}

criterion_group!(benches, seal_and_open);
criterion_main!(benches);
