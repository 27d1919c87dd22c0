//! Every relative link in README.md and docs/**/*.md points at a file in the repository, and
//! every `file.md#anchor` link at a heading of that file.
//!
//! Links are markdown `[text](target)`, `![alt](target)` and `[label]: target` definitions,
//! outside fenced code blocks and code spans. Targets with `http:`, `https:` or `mailto:` and
//! pure `#anchor` targets are skipped. A target is resolved against the directory of the file
//! that holds it (`/path` against the repository root) and must stay inside the repository.

use std::collections::HashSet;
use std::fs;
use std::path::{Component, Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// The markdown files checked: README.md and every `.md` under docs/, sorted.
fn markdown_files(root: &Path) -> Vec<PathBuf> {
    let mut files = vec![root.join("README.md")];
    let mut dirs = vec![root.join("docs")];
    while let Some(dir) = dirs.pop() {
        let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|x| x == "md") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The text with fenced code blocks and code spans replaced by spaces (newlines kept, so line
/// numbers stay right).
fn strip_code(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut fence: Option<String> = None;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let marker: String = trimmed.chars().take_while(|&c| c == '`' || c == '~').collect();
        let opens = indent <= 3 && marker.len() >= 3 && marker.chars().all(|c| c == marker.chars().next().unwrap());
        match &fence {
            Some(open) => {
                if opens && marker.starts_with(open.as_str()) && trimmed[marker.len()..].trim().is_empty() {
                    fence = None;
                }
                out.extend(line.chars().map(|c| if c == '\n' { '\n' } else { ' ' }));
            }
            None if opens => {
                fence = Some(marker);
                out.extend(line.chars().map(|c| if c == '\n' { '\n' } else { ' ' }));
            }
            None => out.push_str(line),
        }
    }
    // Code spans: a run of n backticks up to the next run of exactly n; they may cross lines.
    let chars: Vec<char> = out.chars().collect();
    let mut result = String::with_capacity(out.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '`' {
            result.push(chars[i]);
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && chars[i] == '`' {
            i += 1;
        }
        let n = i - start;
        let mut j = i;
        let mut close = None;
        while j < chars.len() {
            if chars[j] == '`' {
                let run = j;
                while j < chars.len() && chars[j] == '`' {
                    j += 1;
                }
                if j - run == n {
                    close = Some(j);
                    break;
                }
            } else {
                j += 1;
            }
        }
        match close {
            Some(end) => {
                result.extend(chars[start..end].iter().map(|&c| if c == '\n' { '\n' } else { ' ' }));
                i = end;
            }
            None => result.extend(&chars[start..i]),
        }
    }
    result
}

/// `(line, target)` of every link in the (code-stripped) text.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        // Inline links and images: `](target)`, the target ending at the `)` that closes it.
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let mut depth = 0usize;
            let mut end = None;
            for (i, c) in after.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' if depth == 0 => {
                        end = Some(i);
                        break;
                    }
                    ')' => depth -= 1,
                    _ => {}
                }
            }
            match end {
                Some(end) => {
                    found.push((n + 1, after[..end].to_string()));
                    rest = &after[end..];
                }
                None => break,
            }
        }
        // Definitions: `[label]: target`.
        let t = line.trim_start();
        if t.starts_with('[')
            && let Some(close) = t.find("]:")
            && !t[1..close].contains('[')
        {
            let target = t[close + 2..].trim();
            if !target.is_empty() {
                found.push((n + 1, target.to_string()));
            }
        }
    }
    found
}

/// The path part of a link target: `<...>` unwrapped, an optional `"title"` dropped.
fn clean_target(raw: &str) -> String {
    let t = raw.trim();
    if let Some(inner) = t.strip_prefix('<')
        && let Some(end) = inner.find('>')
    {
        return inner[..end].to_string();
    }
    t.split_whitespace().next().unwrap_or("").to_string()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(hex) = std::str::from_utf8(&bytes[i + 1..i + 3])
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `base/rel` with `.` and `..` folded, without touching the file system.
fn normalize(base: &Path, rel: &str) -> PathBuf {
    let mut out = PathBuf::new();
    for c in base.join(rel).components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// GitHub's anchor of a heading: lower case, markup and punctuation other than `-` and `_`
/// dropped, spaces made `-`.
fn slug(heading: &str) -> String {
    // Link text stands for the link: `[text](target)` → `text`.
    let mut plain = String::new();
    let mut rest = heading;
    while let Some(open) = rest.find('[') {
        match rest[open..].find("](").and_then(|mid| rest[open + mid..].find(')').map(|close| (mid, close))) {
            Some((mid, close)) => {
                plain.push_str(&rest[..open]);
                plain.push_str(&rest[open + 1..open + mid]);
                rest = &rest[open + mid + close + 1..];
            }
            None => break,
        }
    }
    plain.push_str(rest);
    plain
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .collect()
}

/// Every anchor a markdown file defines: its headings' slugs (repeats numbered `-1`, `-2`, … as
/// GitHub does) and any explicit `id="..."` or `name="..."`.
fn anchors(text: &str) -> HashSet<String> {
    let mut set = HashSet::new();
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut fenced = false;
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("```") || t.starts_with("~~~") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let hashes = t.chars().take_while(|&c| c == '#').count();
        if (1..=6).contains(&hashes) && t[hashes..].starts_with(' ') {
            let base = slug(t[hashes..].trim().trim_end_matches('#').trim());
            let n = seen.entry(base.clone()).or_insert(0);
            set.insert(if *n == 0 { base.clone() } else { format!("{base}-{n}") });
            *n += 1;
        }
        for attr in ["id=\"", "name=\""] {
            let mut rest = line;
            while let Some(at) = rest.find(attr) {
                let value = &rest[at + attr.len()..];
                if let Some(end) = value.find('"') {
                    set.insert(value[..end].to_string());
                    rest = &value[end..];
                } else {
                    break;
                }
            }
        }
    }
    set
}

/// Why a link does not resolve, or None when it does (or is not checked).
fn check(root: &Path, file: &Path, raw: &str) -> Option<String> {
    let target = clean_target(raw);
    let lower = target.to_ascii_lowercase();
    if target.is_empty() {
        return Some("empty target".into());
    }
    if lower.starts_with("http://") || lower.starts_with("https://") || lower.starts_with("mailto:") || target.starts_with('#') {
        return None;
    }
    let (path, anchor) = match target.split_once('#') {
        Some((p, a)) => (p, Some(a)),
        None => (target.as_str(), None),
    };
    let path = percent_decode(path);
    let resolved = match path.strip_prefix('/') {
        Some(from_root) => normalize(root, from_root),
        None => normalize(file.parent().unwrap(), &path),
    };
    if !resolved.starts_with(root) {
        return Some(format!("{} is outside the repository", resolved.display()));
    }
    if !resolved.exists() {
        return Some(format!("{} does not exist", resolved.display()));
    }
    if let Some(anchor) = anchor.filter(|a| !a.is_empty())
        && resolved.extension().is_some_and(|x| x == "md")
    {
        let text = fs::read_to_string(&resolved).unwrap_or_default();
        if !anchors(&text).contains(&percent_decode(anchor).to_lowercase()) {
            return Some(format!("{} has no heading for #{anchor}", resolved.display()));
        }
    }
    None
}

#[test]
fn every_relative_link_in_readme_and_docs_resolves() {
    let root = repo_root();
    let mut failures = Vec::new();
    let mut checked = 0usize;
    let mut readme_links = 0usize;
    for file in markdown_files(&root) {
        let text = fs::read_to_string(&file).unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        let shown = file.strip_prefix(&root).unwrap_or(&file).display().to_string();
        for (line, target) in links(&strip_code(&text)) {
            checked += 1;
            if shown == "README.md" {
                readme_links += 1;
            }
            if let Some(why) = check(&root, &file, &target) {
                failures.push(format!("{shown}:{line}: link ({target}): {why}"));
            }
        }
    }
    assert!(readme_links >= 5, "found only {readme_links} links in README.md; is the parser broken?");
    assert!(failures.is_empty(), "{} of {checked} links do not resolve:\n{}", failures.len(), failures.join("\n"));
    println!("{checked} links checked");
}

#[test]
fn the_link_parser_sees_links_and_skips_code() {
    let text = "See [a](x.md) and ![b](img/y.png \"title\"), [c](<z w.md>).\n\
                `[not](code.md)` and ``[nor](this.md)``\n\
                ```\n[inside](fence.md)\n```\n\
                [label]: def.md\n\
                [web](https://example.com) [here](#top) [f(x)](f_(1).md)\n";
    let got: Vec<String> = links(&strip_code(text)).into_iter().map(|(_, t)| clean_target(&t)).collect();
    assert_eq!(got, ["x.md", "img/y.png", "z w.md", "def.md", "https://example.com", "#top", "f_(1).md"]);
    assert_eq!(slug("Figure 3: perplexity against the `split` layer"), "figure-3-perplexity-against-the-split-layer");
    assert_eq!(slug("TLS and mutual TLS"), "tls-and-mutual-tls");
    assert_eq!(slug("[Links](a.md) and **bold**"), "links-and-bold");
    let a = anchors("# Title\n## Usage\n## Usage\n```\n# not a heading\n```\n");
    assert!(a.contains("title") && a.contains("usage") && a.contains("usage-1") && !a.contains("not-a-heading"));
}
