//! The proxy-wasm map serialization: `u32` pair count, then each pair's key and value lengths
//! (`u32`, little endian), then each key and value followed by a NUL byte.

/// Serializes `pairs` as the ABI lays maps out.
pub fn serialize<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> Vec<u8> {
    let size = 4 + pairs
        .iter()
        .map(|(k, v)| 8 + k.as_ref().len() + v.as_ref().len() + 2)
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.as_ref().len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.as_ref().len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_ref());
        out.push(0);
        out.extend_from_slice(v.as_ref());
        out.push(0);
    }
    out
}

/// Why a serialized map could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed header map: {0}")]
pub struct MalformedMap(&'static str);

fn u32_at(bytes: &[u8], at: usize) -> Result<usize, MalformedMap> {
    let word = bytes
        .get(at..at + 4)
        .ok_or(MalformedMap("truncated lengths"))?;
    Ok(u32::from_le_bytes([word[0], word[1], word[2], word[3]]) as usize)
}

/// Reads a serialized map back into (key, value) byte pairs. An empty input is an empty map.
/// A map's pairs as raw bytes.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

pub fn deserialize(bytes: &[u8]) -> Result<Pairs, MalformedMap> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let count = u32_at(bytes, 0)?;
    if count > bytes.len() / 8 {
        return Err(MalformedMap("pair count larger than the data"));
    }
    let mut lengths = Vec::with_capacity(count);
    for i in 0..count {
        lengths.push((u32_at(bytes, 4 + i * 8)?, u32_at(bytes, 8 + i * 8)?));
    }
    let mut at = 4 + count * 8;
    let mut take = |len: usize| -> Result<Vec<u8>, MalformedMap> {
        let end = at.checked_add(len).ok_or(MalformedMap("length overflow"))?;
        let value = bytes.get(at..end).ok_or(MalformedMap("truncated data"))?;
        if bytes.get(end) != Some(&0) {
            return Err(MalformedMap("missing NUL terminator"));
        }
        at = end + 1;
        Ok(value.to_vec())
    };
    lengths
        .into_iter()
        .map(|(k, v)| Ok((take(k)?, take(v)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_matches_the_spec_layout() {
        let pairs = [(":method", "GET"), ("x-a", "")];
        let bytes = serialize(&pairs);
        let mut expected = vec![2, 0, 0, 0, 7, 0, 0, 0, 3, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0];
        expected.extend_from_slice(b":method\0GET\0x-a\0\0");
        assert_eq!(bytes, expected);
        let back = deserialize(&bytes).unwrap();
        assert_eq!(back[0], (b":method".to_vec(), b"GET".to_vec()));
        assert_eq!(back[1], (b"x-a".to_vec(), Vec::new()));
        assert!(deserialize(&[]).unwrap().is_empty());
    }

    #[test]
    fn malformed_maps_are_errors_not_panics() {
        let bytes = serialize(&[("k", "v")]);
        assert!(deserialize(&bytes[..bytes.len() - 1]).is_err());
        assert!(deserialize(&[9, 0, 0, 0]).is_err());
        let mut no_nul = bytes.clone();
        let last = no_nul.len() - 1;
        no_nul[last] = b'x';
        assert!(deserialize(&no_nul).is_err());
        assert!(deserialize(&[255, 255, 255, 255, 1, 0, 0, 0]).is_err());
    }
}

#[cfg(test)]
mod properties {
    use super::{deserialize, serialize};
    use proptest::prelude::*;

    proptest! {
        /// Whatever a guest hands over as a map: pairs or an error, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = deserialize(&bytes);
        }

        /// What the host serializes reads back as the same pairs.
        #[test]
        fn serialized_maps_round_trip(pairs in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 0..40), proptest::collection::vec(any::<u8>(), 0..80)),
            0..12,
        )) {
            prop_assert_eq!(deserialize(&serialize(&pairs)).unwrap(), pairs);
        }

        /// A serialized map cut or extended anywhere is refused or read, never a panic.
        #[test]
        fn damaged_maps_never_panic(pairs in proptest::collection::vec(("[a-z]{0,8}", "[a-z]{0,8}"), 1..6), cut in any::<prop::sample::Index>(), flip in any::<(prop::sample::Index, u8)>()) {
            let mut bytes = serialize(&pairs);
            let at = flip.0.index(bytes.len());
            bytes[at] ^= flip.1;
            let _ = deserialize(&bytes);
            bytes.truncate(cut.index(bytes.len()));
            let _ = deserialize(&bytes);
        }
    }
}
