//! The HTTP exchange that opens an SSTP connection inside TLS (MS-SSTP 3.2.5.1, 4.1,
//! PROTOCOLS.md §2.1): one `SSTP_DUPLEX_POST` request with an endless body, one `200`
//! reply, then SSTP packets both ways.

/// The one URI SSTP uses.
pub const SSTP_URI: &str = "/sra_{BA195980-CD49-458b-9E23-C84EE0ADCD75}/";
const METHOD: &str = "SSTP_DUPLEX_POST";
/// The Content-Length both sides send: the body never ends.
const ENDLESS: &str = "18446744073709551615";
/// A request head longer than this is refused (Windows sends about 200 bytes).
pub const MAX_REQUEST_LEN: usize = 4096;
const MAX_HEADERS: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SstpRequest {
    /// SSTPCORRELATIONID: the client's connection GUID, for logs.
    pub correlation_id: Option<String>,
    pub host: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("HTTP request head longer than {MAX_REQUEST_LEN} bytes")]
    TooLong,
    #[error("HTTP request head is not text")]
    NotText,
    #[error("malformed HTTP request line {0:?}")]
    BadRequestLine(String),
    #[error("HTTP method {0:?} is not SSTP_DUPLEX_POST")]
    WrongMethod(String),
    #[error("HTTP request for {0:?}, not the SSTP URI")]
    WrongUri(String),
    #[error("HTTP version {0:?} is not HTTP/1.1")]
    WrongVersion(String),
    #[error("malformed HTTP header line {0:?}")]
    BadHeader(String),
    #[error("more than {MAX_HEADERS} HTTP headers")]
    TooManyHeaders,
    #[error("HTTP status line {0:?} is not 200")]
    NotOk(String),
}

impl HttpError {
    /// The reply that tells the client what was wrong.
    pub fn response(&self) -> Vec<u8> {
        let status = match self {
            HttpError::WrongMethod(_) => "405 Method Not Allowed",
            HttpError::WrongUri(_) => "404 Not Found",
            HttpError::WrongVersion(_) => "505 HTTP Version Not Supported",
            HttpError::TooLong | HttpError::TooManyHeaders => "431 Request Header Fields Too Large",
            _ => "400 Bad Request",
        };
        format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").into_bytes()
    }
}

/// The end of the head (after the blank line), if it has arrived.
fn head_end(stream: &[u8]) -> Option<usize> {
    stream.windows(4).position(|w| w == b"\r\n\r\n").map(|at| at + 4)
}

/// Parses the client's request once its head has arrived: `Ok(None)` asks for more
/// bytes; `Ok(Some((request, consumed)))` leaves the SSTP stream after `consumed`.
pub fn parse_request(stream: &[u8]) -> Result<Option<(SstpRequest, usize)>, HttpError> {
    let Some(end) = head_end(&stream[..stream.len().min(MAX_REQUEST_LEN)]) else {
        return if stream.len() >= MAX_REQUEST_LEN { Err(HttpError::TooLong) } else { Ok(None) };
    };
    let head = std::str::from_utf8(&stream[..end - 4]).map_err(|_| HttpError::NotText)?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(uri), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::BadRequestLine(request_line.into()));
    };
    if method != METHOD {
        return Err(HttpError::WrongMethod(method.into()));
    }
    // Clients spell the GUID's case differently; it is the same resource.
    if !uri.eq_ignore_ascii_case(SSTP_URI) {
        return Err(HttpError::WrongUri(uri.into()));
    }
    if version != "HTTP/1.1" {
        return Err(HttpError::WrongVersion(version.into()));
    }
    let mut request = SstpRequest { correlation_id: None, host: None };
    for (count, line) in lines.enumerate() {
        if count >= MAX_HEADERS {
            return Err(HttpError::TooManyHeaders);
        }
        let (name, value) = line.split_once(':').ok_or_else(|| HttpError::BadHeader(line.into()))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("SSTPCORRELATIONID") {
            request.correlation_id = Some(value.into());
        } else if name.eq_ignore_ascii_case("Host") {
            request.host = Some(value.into());
        }
        // Content-Length is 2^64-1 from every known client and means only "the body
        // does not end"; nothing depends on its value.
    }
    Ok(Some((request, end)))
}

/// The `200 OK` that starts the SSTP stream.
pub fn ok_response() -> Vec<u8> {
    format!("HTTP/1.1 200 OK\r\nContent-Length: {ENDLESS}\r\nServer: p2sgw\r\n\r\n").into_bytes()
}

/// The client's request (test client).
pub fn client_request(host: &str, correlation_id: &str) -> Vec<u8> {
    format!(
        "{METHOD} {SSTP_URI} HTTP/1.1\r\nSSTPCORRELATIONID: {{{correlation_id}}}\r\nContent-Length: {ENDLESS}\r\nHost: {host}\r\n\r\n"
    )
    .into_bytes()
}

/// The gateway's reply, as the test client reads it: `Ok(Some(consumed))` once a `200`
/// head has arrived.
pub fn parse_response(stream: &[u8]) -> Result<Option<usize>, HttpError> {
    let Some(end) = head_end(&stream[..stream.len().min(MAX_REQUEST_LEN)]) else {
        return if stream.len() >= MAX_REQUEST_LEN { Err(HttpError::TooLong) } else { Ok(None) };
    };
    let head = String::from_utf8_lossy(&stream[..end]);
    let status_line = head.lines().next().unwrap_or_default();
    if status_line.starts_with("HTTP/1.1 200 ") || status_line == "HTTP/1.1 200" {
        Ok(Some(end))
    } else {
        Err(HttpError::NotOk(status_line.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_request_is_accepted_and_the_stream_follows() {
        // The request of MS-SSTP 4.1, with the first SSTP bytes behind it.
        let mut stream = b"SSTP_DUPLEX_POST /sra_{BA195980-CD49-458b-9E23-C84EE0ADCD75}/ HTTP/1.1\r\n\
            SSTPCORRELATIONID: {62DFA5C0-E2E0-FD50-D286B00}\r\n\
            Content-Length: 18446744073709551615\r\n\
            Host: sstp.test\r\n\r\n"
            .to_vec();
        let head_len = stream.len();
        stream.extend_from_slice(&[0x10, 0x01]);
        let (request, consumed) = parse_request(&stream).unwrap().unwrap();
        assert_eq!(consumed, head_len);
        assert_eq!(request.correlation_id.as_deref(), Some("{62DFA5C0-E2E0-FD50-D286B00}"));
        assert_eq!(request.host.as_deref(), Some("sstp.test"));
        assert_eq!(parse_request(&stream[..head_len - 1]), Ok(None));
        let ours = client_request("gw.test", "1234");
        assert!(parse_request(&ours).unwrap().is_some());
        assert_eq!(parse_response(&ok_response()), Ok(Some(ok_response().len())));
    }

    #[test]
    fn wrong_requests_are_refused_with_a_status() {
        let get = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(parse_request(get), Err(HttpError::WrongMethod("GET".into())));
        assert!(HttpError::WrongMethod("GET".into()).response().starts_with(b"HTTP/1.1 405 "));
        let uri = b"SSTP_DUPLEX_POST /other HTTP/1.1\r\n\r\n";
        assert_eq!(parse_request(uri), Err(HttpError::WrongUri("/other".into())));
        let lower = b"SSTP_DUPLEX_POST /sra_{ba195980-cd49-458b-9e23-c84ee0adcd75}/ HTTP/1.1\r\n\r\n";
        assert!(parse_request(lower).unwrap().is_some());
        let header = b"SSTP_DUPLEX_POST /sra_{BA195980-CD49-458b-9E23-C84EE0ADCD75}/ HTTP/1.1\r\nnocolon\r\n\r\n";
        assert_eq!(parse_request(header), Err(HttpError::BadHeader("nocolon".into())));
        assert_eq!(parse_request(&[b'a'; MAX_REQUEST_LEN]), Err(HttpError::TooLong));
        let mut many = b"SSTP_DUPLEX_POST /sra_{BA195980-CD49-458b-9E23-C84EE0ADCD75}/ HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse_request(&many), Err(HttpError::TooManyHeaders));
        assert!(parse_response(b"HTTP/1.1 404 Not Found\r\n\r\n").is_err());
    }
}
