//! Large objects (attachments, recordings, voicemail audio), written by
//! appending and read by range. Each blob has an owner (a user id, whose
//! per-user quota it counts against) and a retention class (`recording`,
//! `voicemail`, `attachment`, ...) the tenant's retention policy applies to.
//! Writes belong to the request's transaction: a blob created by a request
//! that fails is gone with it. Deleting a blob destroys its key at once.

use crate::Error;
use crate::bindings::switchboard::host::blobs as raw;

/// Most bytes one [`append`] takes.
pub const MAX_APPEND_BYTES: usize = 4 << 20;
/// Most bytes one [`read`] returns.
pub const MAX_READ_BYTES: u32 = 4 << 20;

/// Starts an empty blob; returns its id.
pub fn create(owner: Option<&str>, retention_class: &str) -> Result<String, Error> {
    crate::tx::note(raw::create(owner, retention_class))
}

/// Appends `data` (split into [`MAX_APPEND_BYTES`] pieces); returns the
/// new size.
pub fn append(id: &str, data: &[u8]) -> Result<u64, Error> {
    let mut size = raw::size(id)?;
    for piece in data.chunks(MAX_APPEND_BYTES) {
        size = crate::tx::note(raw::append(id, piece))?;
    }
    Ok(size)
}

/// Up to `len` bytes from `offset`.
pub fn read(id: &str, offset: u64, len: u32) -> Result<Vec<u8>, Error> {
    raw::read(id, offset, len)
}

/// The whole blob (for small blobs; read large ones by range).
pub fn read_all(id: &str) -> Result<Vec<u8>, Error> {
    let size = raw::size(id)?;
    let mut out = Vec::with_capacity(size as usize);
    while (out.len() as u64) < size {
        let piece = raw::read(id, out.len() as u64, MAX_READ_BYTES)?;
        if piece.is_empty() {
            break;
        }
        out.extend(piece);
    }
    Ok(out)
}

/// The blob's size in bytes.
pub fn size(id: &str) -> Result<u64, Error> {
    raw::size(id)
}

/// Deletes a blob; returns whether it existed. Refused (`denied`) while
/// the blob or the tenant is under legal hold.
pub fn delete(id: &str) -> Result<bool, Error> {
    crate::tx::note(raw::delete(id))
}
