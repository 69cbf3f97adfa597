//! Parsing `/proc/<pid>/mountinfo` (proc(5)), the text scan backend.
//!
//! Written here rather than taken from procfs because procfs-core 0.18 keeps the kernel's
//! octal escapes (`\040` for a space) in paths, and because this parser must stay within a
//! few percent of the kernel's cost of producing the text (one arena per table, no
//! per-field allocation).

use crate::engine::table::{Mount, MountTable};

/// A line of mountinfo that does not have the documented shape.
#[derive(Debug, thiserror::Error)]
#[error("malformed mountinfo line {line}: {text:?}")]
pub struct ParseError {
    pub line: usize,
    pub text: String,
}

/// Parses a whole mountinfo file into a table.
pub fn parse(buf: &[u8]) -> Result<MountTable, ParseError> {
    parse_with_signatures(buf, &[])
}

/// Parses a whole mountinfo file, flagging overlays whose `upperdir` option is one of
/// `signatures` (the options themselves are not kept).
pub fn parse_with_signatures(buf: &[u8], signatures: &[Vec<u8>]) -> Result<MountTable, ParseError> {
    // Lines average well over 100 bytes; memchr keeps the scans at memory speed, which
    // matters when a node's namespaces add up to hundreds of megabytes of text.
    let mut table = MountTable::with_capacity(buf.len() / 100, buf.len());
    let mut start = 0;
    for (n, end) in memchr::memchr_iter(b'\n', buf)
        .chain(std::iter::once(buf.len()))
        .enumerate()
    {
        let line = &buf[start..end];
        start = end + 1;
        if line.is_empty() {
            continue;
        }
        parse_line(line, &mut table, signatures).ok_or_else(|| ParseError {
            line: n + 1,
            text: String::from_utf8_lossy(line).into_owned(),
        })?;
    }
    Ok(table)
}

/// Space-separated fields of a line.
struct Fields<'a> {
    rest: Option<&'a [u8]>,
}

impl<'a> Iterator for Fields<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = self.rest?;
        match memchr::memchr(b' ', rest) {
            Some(at) => {
                self.rest = Some(&rest[at + 1..]);
                Some(&rest[..at])
            }
            None => {
                self.rest = None;
                Some(rest)
            }
        }
    }
}

/// `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue`
fn parse_line(line: &[u8], table: &mut MountTable, signatures: &[Vec<u8>]) -> Option<()> {
    let mut fields = Fields { rest: Some(line) };
    let id = parse_u64(fields.next()?)?;
    let parent_id = parse_u64(fields.next()?)?;
    let (major, minor) = split_once(fields.next()?, b':')?;
    let dev = (parse_u64(major)? as u32, parse_u64(minor)? as u32);
    let root = fields.next()?;
    let mount_point = fields.next()?;
    let _options = fields.next()?;
    let (mut peer_group, mut master) = (None, None);
    loop {
        let tag = fields.next()?;
        if tag == b"-" {
            break;
        }
        if let Some(n) = tag.strip_prefix(b"shared:") {
            peer_group = std::num::NonZeroU64::new(parse_u64(n)?);
        } else if let Some(n) = tag.strip_prefix(b"master:") {
            master = std::num::NonZeroU64::new(parse_u64(n)?);
        }
    }
    let fs_type = fields.next()?;
    let source = fields.next()?;
    let layer_signature = if !signatures.is_empty() && fs_type == b"overlay" {
        fields
            .next()
            .and_then(|options| upperdir_signature(options, signatures))
    } else {
        None
    };
    let root = table.intern_with(|arena| decode_into(root, arena));
    let mount_point = table.intern_with(|arena| decode_into(mount_point, arena));
    let fs_type = table.intern_with(|arena| decode_into(fs_type, arena));
    let source = table.intern_with(|arena| decode_into(source, arena));
    table.mounts.push(Mount {
        id,
        parent_id,
        unique_id: None,
        dev,
        peer_group,
        master,
        root,
        mount_point,
        fs_type,
        source,
        has_strings: true,
        has_root: true,
        layer_signature,
    });
    Some(())
}

/// Which of `signatures` the `upperdir=` of comma-separated mount `options` is, if any.
pub fn upperdir_signature(options: &[u8], signatures: &[Vec<u8>]) -> Option<u32> {
    signature_of(&upperdir(options)?, signatures)
}

/// Which of `signatures` the overlay `upperdir` is, if any.
pub fn signature_of(upperdir: &[u8], signatures: &[Vec<u8>]) -> Option<u32> {
    signatures
        .iter()
        .position(|s| s == upperdir)
        .map(|i| i as u32)
}

/// An overlay's `upperdir`, decoded, from its super options.
pub fn upperdir(options: &[u8]) -> Option<Vec<u8>> {
    let dir = options
        .split(|&b| b == b',')
        .find_map(|opt| opt.strip_prefix(b"upperdir="))?;
    Some(decode(dir))
}

fn split_once(s: &[u8], sep: u8) -> Option<(&[u8], &[u8])> {
    let at = s.iter().position(|&b| b == sep)?;
    Some((&s[..at], &s[at + 1..]))
}

fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &b| {
        let digit = b.checked_sub(b'0').filter(|d| *d < 10)?;
        acc.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// Appends `field` to `out` with mountinfo's `\ooo` escapes decoded. The kernel escapes
/// space, tab, newline and backslash (`\040 \011 \012 \134`); any other well-formed octal
/// escape is decoded too, and a malformed one is kept as it is.
pub fn decode_into(field: &[u8], out: &mut Vec<u8>) {
    if memchr::memchr(b'\\', field).is_none() {
        out.extend_from_slice(field);
        return;
    }
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\'
            && i + 4 <= field.len()
            && let Some(byte) = octal(&field[i + 1..i + 4])
        {
            out.push(byte);
            i += 4;
            continue;
        }
        out.push(field[i]);
        i += 1;
    }
}

fn octal(digits: &[u8]) -> Option<u8> {
    if digits.len() != 3 || !digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
        return None;
    }
    let value = digits
        .iter()
        .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
    u8::try_from(value).ok()
}

/// Decodes a mountinfo field into a new buffer.
pub fn decode(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    decode_into(field, &mut out);
    out
}

/// Encodes bytes the way the kernel writes them into mountinfo (the inverse of [`decode`]
/// for the characters the kernel escapes), for one-line human output.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                ' ' | '\t' | '\n' | '\\' => out.push_str(&format!("\\{:03o}", c as u32)),
                _ => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\{b:03o}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &[u8] = b"22 27 0:21 / /proc rw,relatime - proc proc rw\n\
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
40 27 0:45 /sub /var/lib/docker/overlay2/a\\040b/merged rw master:7 shared:9 - overlay overlay rw,lowerdir=x\n";

    #[test]
    fn parses_fields_and_optional_tags() {
        let t = parse(SAMPLE).unwrap();
        assert_eq!(t.mounts.len(), 3);
        let m = &t.mounts[2];
        assert_eq!((m.id, m.parent_id, m.dev), (40, 27, (0, 45)));
        assert_eq!(m.peer_group.map(|g| g.get()), Some(9));
        assert_eq!(m.master.map(|g| g.get()), Some(7));
        assert_eq!(t.root(m), b"/sub");
        assert_eq!(t.mount_point(m), b"/var/lib/docker/overlay2/a b/merged");
        assert_eq!(t.str(m.fs_type), b"overlay");
        assert_eq!(t.mounts[1].peer_group.map(|g| g.get()), Some(1));
        assert_eq!(t.mounts[0].peer_group, None);
    }

    #[test]
    fn escapes_round_trip() {
        let raw = b"a b\tc\nd\\e\xffz".to_vec();
        let encoded = encode(&raw);
        assert_eq!(encoded, "a\\040b\\011c\\012d\\134e\\377z");
        assert_eq!(decode(encoded.as_bytes()), raw);
    }

    #[test]
    fn malformed_escapes_are_kept() {
        assert_eq!(decode(b"a\\9bc\\0"), b"a\\9bc\\0");
        assert_eq!(decode(b"trail\\"), b"trail\\");
        assert_eq!(decode(b"\\777x"), b"\\777x");
    }

    #[test]
    fn flags_overlays_by_upperdir() {
        let text = b"40 27 0:45 / /x rw - overlay overlay rw,lowerdir=/l,upperdir=/r/overlay2/L1/diff,workdir=/w\n\
41 27 0:46 / /y rw - overlay overlay rw,lowerdir=/l,upperdir=/r/overlay2/L10/diff,workdir=/w\n\
42 27 0:47 / /z rw - tmpfs upperdir=/r/overlay2/L1/diff rw\n";
        let sig = vec![b"/r/overlay2/L1/diff".to_vec()];
        let t = parse_with_signatures(text, &sig).unwrap();
        let flags: Vec<Option<u32>> = t.mounts.iter().map(|m| m.layer_signature).collect();
        assert_eq!(flags, vec![Some(0), None, None]);
    }

    #[test]
    fn rejects_malformed_lines() {
        let err = parse(b"22 27 0:21 / /proc rw\n").unwrap_err();
        assert_eq!(err.line, 1);
        assert!(parse(b"x 27 0:21 / / rw - a b c\n").is_err());
    }
}
