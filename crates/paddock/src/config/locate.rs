//! Finding positions and key paths in the config's source text, so that every
//! error names a line, a column and a dotted key such as `services.web.port`.

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map(|i| offset - i).unwrap_or(offset + 1);
    (line, col)
}

fn header_of(line: &str) -> Option<String> {
    let t = line.trim();
    if !t.starts_with('[') {
        return None;
    }
    let inner = t.trim_start_matches('[');
    let end = inner.find(']')?;
    Some(inner[..end].trim().replace(['"', '\''], ""))
}

/// The dotted key at `offset`: the table header above it, then the keys of the
/// line (inline tables included) up to the key whose value holds the offset.
pub fn key_path_at(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let mut table = String::new();
    for line in text[..line_start].lines() {
        if let Some(h) = header_of(line) {
            table = h;
        }
    }
    let line_end = text[offset..]
        .find('\n')
        .map(|i| offset + i)
        .unwrap_or(text.len());
    let line = &text[line_start..line_end];
    if let Some(h) = header_of(line) {
        return h;
    }
    let keys = match keys_in_line(line, offset - line_start) {
        Some(k) => k,
        None => {
            // A value continued from an earlier line (a multi-line array): the key is
            // on the nearest line above that has one.
            let mut found = String::new();
            for l in text[..line_start].lines().rev() {
                if header_of(l).is_some() {
                    break;
                }
                if let Some(k) = keys_in_line(l, l.len()) {
                    found = k;
                    break;
                }
            }
            found
        }
    };
    match (table.is_empty(), keys.is_empty()) {
        (_, true) => table,
        (true, false) => keys,
        (false, false) => format!("{table}.{keys}"),
    }
}

/// The key path within one line that the column `col` belongs to.
fn keys_in_line(line: &str, col: usize) -> Option<String> {
    let mut path: Vec<String> = vec![];
    let mut token = String::new();
    let mut token_start = 0;
    let mut last_key: Option<String> = None;
    let mut best: Option<Vec<String>> = None;
    let mut quote: Option<char> = None;
    for (i, c) in line.char_indices() {
        if let Some(q) = quote {
            if c == q {
                quote = None;
            } else {
                token.push(c);
            }
            continue;
        }
        match c {
            '"' | '\'' => {
                if token.is_empty() {
                    token_start = i;
                }
                quote = Some(c);
            }
            '=' => {
                let k = std::mem::take(&mut token);
                if token_start <= col {
                    let mut p = path.clone();
                    p.push(k.clone());
                    best = Some(p);
                }
                last_key = Some(k);
            }
            '{' => {
                if let Some(k) = last_key.take() {
                    path.push(k);
                }
                token.clear();
            }
            '}' => {
                path.pop();
                token.clear();
            }
            ',' | '[' | ']' => token.clear(),
            '#' => break,
            c if c.is_whitespace() => {}
            c => {
                if token.is_empty() {
                    token_start = i;
                }
                token.push(c);
            }
        }
    }
    best.map(|p| p.join("."))
}

/// The offset of `key` inside `[table]`, else of the table's header, else 0.
pub fn find_key(text: &str, table: &str, key: &str) -> usize {
    let mut offset = 0;
    let mut in_table = false;
    let mut header_at = None;
    for line in text.split_inclusive('\n') {
        if let Some(h) = header_of(line) {
            in_table = h == table;
            if in_table && header_at.is_none() {
                header_at = Some(offset + line.find('[').unwrap_or(0));
            }
        } else if in_table && !key.is_empty() {
            let t = line.trim_start();
            if let Some(rest) = t.strip_prefix(key)
                && rest.trim_start().starts_with('=')
            {
                let indent = line.len() - t.len();
                let value = rest.find('=').map(|i| i + 1).unwrap_or(0);
                let ws = rest[value..].len() - rest[value..].trim_start().len();
                return offset + indent + key.len() + value + ws;
            }
        }
        offset += line.len();
    }
    header_at.unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_paths() {
        let t = "[services.web]\nhealth = { http = 5 }\n";
        let off = t.find('5').unwrap();
        assert_eq!(key_path_at(t, off), "services.web.health.http");
        let t = "[a]\ncommand = [\n  \"x\",\n  1,\n]\n";
        assert_eq!(key_path_at(t, t.find('1').unwrap()), "a.command");
    }

    #[test]
    fn find_key_points_at_value() {
        let t = "[x]\nport = 1\n[y]\nport = 2\n";
        let off = find_key(t, "y", "port");
        assert_eq!(&t[off..off + 1], "2");
        assert_eq!(line_col(t, off), (4, 8));
    }
}
