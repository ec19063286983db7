//! The RFC 5322 header section as every part of the relay reads it: where it ends
//! and what each field is named. `rewrite_from`, the long-line re-encoder and
//! sendmail's message preparation all read fields through here, so they agree on
//! what a field is.

/// The length of the header section at the start of `content`: every header field
/// and its continuation lines, up to (not including) the empty line or the first
/// line that is not a field. `None` when `content` ends inside the header section
/// and `complete` is false (more content follows).
pub fn header_len(content: &[u8], complete: bool) -> Option<usize> {
    let mut pos = 0;
    while pos < content.len() {
        let Some(lf) = content[pos..].iter().position(|&b| b == b'\n') else {
            // The last line has no end: a field only if the content is complete.
            return if complete {
                Some(if field_name(&content[pos..]).is_some() {
                    content.len()
                } else {
                    pos
                })
            } else {
                None
            };
        };
        let line = &content[pos..pos + lf + 1];
        let continuation = pos > 0 && matches!(line.first(), Some(b' ' | b'\t'));
        if !continuation && field_name(line).is_none() {
            return Some(pos);
        }
        pos += lf + 1;
    }
    if complete { Some(pos) } else { None }
}

/// The field name of a line that starts a header field (`name:`, RFC 5322 §2.2:
/// printable ASCII but ':', then optional WSP as obsolete syntax allows).
pub fn field_name(line: &[u8]) -> Option<&[u8]> {
    let colon = line.iter().position(|&b| b == b':')?;
    let name = line[..colon].trim_ascii_end();
    (!name.is_empty() && name.iter().all(|&b| (33..=126).contains(&b))).then_some(name)
}
