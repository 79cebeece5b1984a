//! Helpers shared by the crate's unit tests; nothing here is built outside them.

use proptest::sample::Index;

/// Damages a message's encoding as the codecs' proptests do: `how` 0 changes the byte
/// at `at` to `byte` (when there is one), 1 cuts the bytes short at `at`, anything
/// else appends `extra`.
pub(crate) fn damage(bytes: &mut Vec<u8>, at: Index, byte: u8, how: u8, extra: &[u8]) {
    match how {
        0 if !bytes.is_empty() => {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        1 => bytes.truncate(at.index(bytes.len() + 1)),
        _ => bytes.extend_from_slice(extra),
    }
}
