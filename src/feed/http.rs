//! One GET to a media server with ureq, its failures sorted by what a person has to fix:
//! the credentials ([`HttpError::Auth`]), the address or the server's state
//! ([`HttpError::Unreachable`]), or the server's answer ([`HttpError::Status`],
//! [`HttpError::Failed`]).

use std::io;
use std::time::Duration;

use ureq::Agent;

/// How long one request may take, connecting and reading included: a server on the LAN
/// answers well inside it, and a round must not hang on one that does not.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The largest answer read: a long On Deck list is well under a megabyte.
const MAX_BODY: u64 = 32 << 20;

/// Why a GET gave no body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// 401 or 403: the token or key is wrong.
    Auth(u16),
    /// Any other status but 2xx, with the redirect's target for a 3xx.
    Status(u16, Option<String>),
    /// No connection: refused, no route, no such host, a timeout.
    Unreachable(String),
    /// A connection, but no answer that HTTP can read.
    Failed(String),
}

impl HttpError {
    /// Whether every other request of the round would fail alike: the credentials are
    /// refused, or the server cannot be reached.
    pub fn is_for_all(&self) -> bool {
        matches!(self, HttpError::Auth(_) | HttpError::Unreachable(_))
    }
}

/// The agent every request of a feed goes through.
pub fn agent() -> Agent {
    Agent::config_builder()
        .timeout_global(Some(TIMEOUT))
        // Statuses are ours to explain, and a redirect (to https, most likely) is reported
        // rather than followed into a scheme this build does not speak.
        .http_status_as_error(false)
        .max_redirects(0)
        .max_redirects_will_error(false)
        .user_agent(concat!("cachefs/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

/// `GET url?query` with `headers`; the body of a 2xx answer.
pub fn get(
    agent: &Agent,
    url: &str,
    query: &[(&str, String)],
    headers: &[(&str, String)],
) -> Result<Vec<u8>, HttpError> {
    let mut req = agent.get(url);
    for (k, v) in query {
        req = req.query(*k, v);
    }
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let mut resp = req.call().map_err(sort)?;
    let status = resp.status().as_u16();
    match status {
        200..=299 => resp
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_vec()
            .map_err(|e| HttpError::Failed(format!("cannot read the answer: {e}"))),
        401 | 403 => Err(HttpError::Auth(status)),
        _ => Err(HttpError::Status(
            status,
            resp.headers()
                .get("location")
                .and_then(|l| l.to_str().ok())
                .map(str::to_string),
        )),
    }
}

fn sort(e: ureq::Error) -> HttpError {
    use ureq::Error as E;
    match e {
        E::HostNotFound => HttpError::Unreachable("no such host".into()),
        E::ConnectionFailed => HttpError::Unreachable("the connection failed".into()),
        E::Timeout(_) => {
            HttpError::Unreachable(format!("no answer within {} s", TIMEOUT.as_secs()))
        }
        E::Io(io) if is_unreachable(&io) => HttpError::Unreachable(io.to_string()),
        other => HttpError::Failed(other.to_string()),
    }
}

fn is_unreachable(e: &io::Error) -> bool {
    use io::ErrorKind as K;
    matches!(
        e.kind(),
        K::ConnectionRefused
            | K::ConnectionReset
            | K::ConnectionAborted
            | K::HostUnreachable
            | K::NetworkUnreachable
            | K::NetworkDown
            | K::AddrNotAvailable
            | K::TimedOut
            | K::NotFound
    )
}
