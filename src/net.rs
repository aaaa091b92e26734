//! What every HTTP client of skyrules shares when it reads from the network:
//! a response body read up to a cap counted while it streams, so that a
//! server sending hundreds of MiB (or never stopping) costs at most the cap
//! in memory.
//!
//! Used by the SkyLight client and the notification channels. Does not own
//! what a cut-off body means: the SkyLight client treats it as a malformed
//! response, a notifier only shows less of an error body.

/// A response body, read as far as the cap allowed.
pub(crate) struct Body {
    /// The bytes read, at most the cap.
    pub bytes: Vec<u8>,
    /// False when the server had more to send than the cap allowed; the
    /// rest was never read (the connection is dropped with the response).
    pub complete: bool,
}

/// Reads `resp`'s body, stopping before it would hold more than `limit`
/// bytes. A `Content-Length` over the limit is refused before any byte is
/// read; without one, chunks are counted as they arrive.
pub(crate) async fn read_body(
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<Body, reqwest::Error> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Ok(Body {
            bytes: Vec::new(),
            complete: false,
        });
    }
    // Sized from what the server announced, never from more than the cap.
    let hint = resp.content_length().unwrap_or(0).min(limit as u64) as usize;
    let mut bytes = Vec::with_capacity(hint);
    while let Some(chunk) = resp.chunk().await? {
        if bytes.len() + chunk.len() > limit {
            let room = limit - bytes.len();
            bytes.extend_from_slice(&chunk[..room]);
            return Ok(Body {
                bytes,
                complete: false,
            });
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Body {
        bytes,
        complete: true,
    })
}
