//! What may differ between the README's sample output and a fresh run, and nothing more. Both
//! sides go through the same rules, so a sample can be pasted from a real run unchanged:
//!
//! - runs of spaces are one space (columns are padded to their widest value, which the rules
//!   below may change);
//! - an RFC 3339 UTC time (`2026-12-07T22:28:48Z`) is `<time>`;
//! - a token id (16 hex digits, random) is `<id>`;
//! - the shard map's epoch (`epoch 3`, `"epoch": 3`) is `<n>`: how many maps the coordinator
//!   placed while the members joined depends on when each heartbeat landed;
//! - `bunting cluster status`: each member's HEARD(ms) (the time since its last heartbeat) is
//!   `<n>`.
//!
//! Everything else (shard counts, ids, versions, counts, statistics) must match exactly: a fresh
//! database and the tour's fixed order make them the same on every run.

use regex::Regex;

/// The lines `command` printed (or the README shows for it), with what may vary masked.
pub fn normalize(command: &str, lines: &[String]) -> Vec<String> {
    let time = Regex::new(r"\b\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z\b").unwrap();
    let token_id = Regex::new(r"\b[0-9a-f]{16}\b").unwrap();
    let epoch = Regex::new(r#"\b(epoch"?:?) \d+\b"#).unwrap();
    let cluster_status = command.contains("cluster status") && !command.contains("--json");
    lines
        .iter()
        .map(|line| {
            let line = time.replace_all(line, "<time>");
            let line = token_id.replace_all(&line, "<id>");
            let line = epoch.replace_all(&line, "$1 <n>");
            let mut words: Vec<&str> = line.split_whitespace().collect();
            if cluster_status {
                mask_cluster_status(&mut words);
            }
            words.join(" ")
        })
        .collect()
}

/// Member rows: `node-1  up  78  0  127.0.0.1:8101 ...`.
fn mask_cluster_status(words: &mut [&str]) {
    let member_row = words.len() >= 4
        && ["up", "draining", "down", "joining"].contains(&words[1])
        && words[3].parse::<u64>().is_ok();
    if member_row {
        words[3] = "<n>";
    }
}

/// A diff of `shown` (the README's lines from `line`) against `printed`, naming the README line
/// of each difference; `None` when they agree after [`normalize`].
pub fn diff(command: &str, line: usize, shown: &[String], printed: &[String]) -> Option<String> {
    let want = normalize(command, shown);
    let got = normalize(command, printed);
    if want == got {
        return None;
    }
    let mut out = String::new();
    for k in 0..want.len().max(got.len()) {
        let (w, g) = (want.get(k), got.get(k));
        if w == g {
            continue;
        }
        out.push_str(&format!(
            "  README.md:{}\n    shown:   {}\n    printed: {}\n",
            line + k,
            w.map_or("(nothing)", String::as_str),
            g.map_or("(nothing)", String::as_str),
        ));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn times_padding_epochs_and_heartbeats_may_differ() {
        let shown = lines(
            "epoch 3  coordinator node-1\n\
             node-2           up            91         83  127.0.0.1:8102\n\
             9  2026-12-07T22:28:48Z  delete\n\
             74f83c07b5a7a7cd  bootstrap",
        );
        let printed = lines(
            "epoch 4  coordinator node-1\n\
             node-2   up   91   7  127.0.0.1:8102\n\
             9  2027-01-01T00:00:00Z  delete\n\
             18e195edea658ae4  bootstrap",
        );
        assert_eq!(diff("bunting cluster status", 10, &shown, &printed), None);
        let shown =
            lines("{\n  \"epoch\": 2,\ndrained node-4: the cluster serves epoch 4 without it");
        let printed =
            lines("{\n  \"epoch\": 13,\ndrained node-4: the cluster serves epoch 5 without it");
        assert_eq!(diff("bunting resolve", 1, &shown, &printed), None);
    }

    #[test]
    fn anything_else_is_a_difference_at_its_line() {
        let shown = lines("epoch 3\nnode-2 up 91 83 127.0.0.1:8102");
        let printed = lines("epoch 3\nnode-2 up 90 83 127.0.0.1:8102");
        let d = diff("bunting cluster status", 10, &shown, &printed).unwrap();
        assert!(d.contains("README.md:11"), "{d}");
        assert!(!d.contains("README.md:10"), "{d}");
        // Heartbeat ages are only masked in cluster status.
        let d = diff("bunting flags list", 1, &lines("a 1 83"), &lines("a 1 84"));
        assert!(d.is_some());
        assert!(
            diff("x", 1, &lines("a"), &lines("a\nb"))
                .unwrap()
                .contains("(nothing)")
        );
    }
}
