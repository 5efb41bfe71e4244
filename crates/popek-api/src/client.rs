//! The client side, for `popek ctl`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use crate::ApiError;

/// Send `method path` (with `body`, or an empty JSON object for PUT) to the API socket at
/// `socket`; returns the HTTP status and the body.
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String), ApiError> {
    let shown = socket.display().to_string();
    let mut s = UnixStream::connect(socket).map_err(|reason| ApiError::Connect {
        path: shown.clone(),
        reason,
    })?;
    let body = body.unwrap_or(if method == "PUT" { "{}" } else { "" });
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let proto = |why: String| ApiError::Protocol {
        path: shown.clone(),
        why,
    };
    s.write_all(req.as_bytes())
        .map_err(|e| proto(e.to_string()))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| proto(e.to_string()))?;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(&buf) {
        Ok(httparse::Status::Complete(head)) => Ok((
            resp.code.unwrap_or(0),
            String::from_utf8_lossy(&buf[head..]).into_owned(),
        )),
        _ => Err(proto("the answer is not HTTP".into())),
    }
}
