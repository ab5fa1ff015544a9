//! Percent-encoding of keys in URLs, shared by the server (paths and query
//! parameters), the peer calls and the command-line client.

/// Percent-encodes everything but unreserved characters and `/`.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes %XX escapes; None on a malformed escape.
pub fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hi = (hex[0] as char).to_digit(16)?;
            let lo = (hex[1] as char).to_digit(16)?;
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b").unwrap(), b"a b");
        assert_eq!(percent_decode("%2F%2f").unwrap(), b"//");
        assert!(percent_decode("%2").is_none());
        assert!(percent_decode("%zz").is_none());
        assert_eq!(percent_decode("plain").unwrap(), b"plain");
    }

    #[test]
    fn percent_encoding_round_trips() {
        let key = "a b/é?&%";
        let enc = percent_encode(key);
        assert_eq!(enc, "a%20b/%C3%A9%3F%26%25");
        assert_eq!(percent_decode(&enc).unwrap(), key.as_bytes());
    }
}
