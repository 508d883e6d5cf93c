//! Where a stashed tail lies: the 16 bytes that end a frame whose tail the
//! connector left in its stash. (Which parts of the stash are free is the
//! connector's private bookkeeping, a [`laggard::transport::StashPool`];
//! the acceptor only reads blocks the connector names.)

/// Bytes at the end of a frame with a stashed tail that say where it is.
pub const WHERE_LEN: u64 = 16;

/// Where a stashed tail lies, from the [`WHERE_LEN`] bytes that end its
/// frame (offset and length, little-endian): `(offset, length)`, checked
/// to lie inside a stash of `stash` bytes.
pub fn tail_where(bytes: [u8; WHERE_LEN as usize], stash: u64) -> Result<(u64, u64), String> {
    let off = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    let len = u64::from_le_bytes(bytes[8..].try_into().expect("8 bytes"));
    if off.checked_add(len).is_none_or(|end| end > stash) {
        return Err(format!(
            "a stashed tail of {len} bytes at offset {off} lies outside the {stash}-byte stash"
        ));
    }
    Ok((off, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tail_must_lie_inside_the_stash() {
        let at = |off: u64, len: u64| {
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&off.to_le_bytes());
            b[8..].copy_from_slice(&len.to_le_bytes());
            tail_where(b, 4096)
        };
        assert_eq!(at(0, 4096), Ok((0, 4096)));
        assert_eq!(at(4000, 96), Ok((4000, 96)));
        assert!(at(4000, 97).is_err());
        assert!(at(u64::MAX, 2).is_err());
        assert!(at(1, u64::MAX).is_err());
    }
}
