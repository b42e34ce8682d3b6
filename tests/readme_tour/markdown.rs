//! The tour as README.md writes it: every fenced block from `## Tour` to the end of the file,
//! read into the commands to run (with the output shown for them) and the blocks not run (each
//! with the reason the README gives). The conventions are README.md's, "How the tour is tested".

/// The heading the tour starts at; everything from it to the end of the file is read.
pub const TOUR_HEADING: &str = "## Tour";

/// Put on the line right before a fenced block: the block is not run, for the reason given.
const SKIP_MARKER: &str = "<!-- tour: skip ";

/// One command, as a reader pastes it (continuation lines included).
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The README line the command starts at (1-based).
    pub line: usize,
    pub command: String,
    /// A `$ ` transcript line: its status is not checked (an error resolution exits 1), only
    /// its output.
    pub transcript: bool,
    pub expect: Option<Expected>,
}

/// Output the README shows for a step.
#[derive(Debug, Clone, PartialEq)]
pub struct Expected {
    /// The README line the output starts at (1-based).
    pub line: usize,
    pub lines: Vec<String>,
}

/// A fenced block of the tour that is not run.
#[derive(Debug, Clone, PartialEq)]
pub struct Skipped {
    pub line: usize,
    pub lang: String,
    pub reason: String,
}

#[derive(Debug, Default, PartialEq)]
pub struct Tour {
    pub steps: Vec<Step>,
    pub skipped: Vec<Skipped>,
}

/// Reads the tour out of README.md's text. A README that breaks a convention (a block in the tour
/// that is neither shell nor output and has no skip marker, an output block with no command
/// before it) is an error naming its line, so nothing is left out silently.
pub fn read_tour(readme: &str) -> Result<Tour, String> {
    let lines: Vec<&str> = readme.lines().collect();
    let start = lines
        .iter()
        .position(|l| *l == TOUR_HEADING)
        .ok_or_else(|| format!("README.md has no {TOUR_HEADING:?} heading"))?;
    let mut tour = Tour::default();
    let mut skip: Option<String> = None;
    // Whether the last fenced block was shell with only blank lines since: a ```text block then
    // shows the output of its last command.
    let mut after_sh = false;
    let mut i = start + 1;
    while i < lines.len() {
        let line = lines[i];
        if let Some(reason) = line.strip_prefix(SKIP_MARKER) {
            let reason = reason.trim_end().strip_suffix("-->").map(str::trim);
            let Some(reason) = reason.filter(|r| !r.is_empty()) else {
                return Err(format!(
                    "README.md:{}: a skip marker is `<!-- tour: skip REASON -->` on one line",
                    i + 1
                ));
            };
            skip = Some(reason.to_owned());
            after_sh = false;
            i += 1;
            continue;
        }
        let Some(lang) = line.strip_prefix("```") else {
            if !line.trim().is_empty() {
                after_sh = false;
                if skip.is_some() {
                    return Err(format!(
                        "README.md:{}: a skip marker must be right before its block",
                        i + 1
                    ));
                }
            }
            i += 1;
            continue;
        };
        let open = i;
        let body_start = i + 1;
        let close = (body_start..lines.len())
            .find(|&j| lines[j].starts_with("```"))
            .ok_or_else(|| format!("README.md:{}: a fenced block that is not closed", open + 1))?;
        let body = &lines[body_start..close];
        let lang = lang.trim().to_owned();
        if let Some(reason) = skip.take() {
            tour.skipped.push(Skipped {
                line: open + 1,
                lang,
                reason,
            });
            after_sh = false;
        } else if lang == "sh" {
            tour.steps.extend(read_sh(body, body_start)?);
            after_sh = true;
        } else if lang == "text" && after_sh {
            let step = tour.steps.last_mut().ok_or_else(|| {
                format!("README.md:{}: an output block with no command", open + 1)
            })?;
            if step.expect.is_some() {
                return Err(format!(
                    "README.md:{}: output for README.md:{}, which already shows its output",
                    open + 1,
                    step.line
                ));
            }
            step.expect = Some(Expected {
                line: body_start + 1,
                lines: body.iter().map(|l| (*l).to_owned()).collect(),
            });
            after_sh = false;
        } else {
            return Err(format!(
                "README.md:{}: a ```{lang} block in the tour that is neither run nor marked \
                 `<!-- tour: skip REASON -->`",
                open + 1
            ));
        }
        i = close + 1;
    }
    Ok(tour)
}

/// The commands of one ```sh block whose body starts at 0-based line `first`. A `$ ` line is a
/// transcript: the lines after it, up to a blank line, the next `$ ` or the block's end, are its
/// output. Other lines are commands (a trailing `\`, `|`, `&&` or `||` continues one); comment
/// lines are not run.
fn read_sh(body: &[&str], first: usize) -> Result<Vec<Step>, String> {
    let mut steps = Vec::new();
    let mut j = 0;
    while j < body.len() {
        let line = body[j];
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            j += 1;
            continue;
        }
        let start = j;
        let (transcript, first_line) = match line.strip_prefix("$ ") {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        let mut command = first_line.to_owned();
        while continues(&command) {
            j += 1;
            let next = body.get(j).ok_or_else(|| {
                format!(
                    "README.md:{}: a continued command at the block's end",
                    first + j
                )
            })?;
            command.push('\n');
            command.push_str(next);
        }
        j += 1;
        let expect = if transcript {
            let out_start = j;
            while j < body.len() && !body[j].is_empty() && !body[j].starts_with("$ ") {
                j += 1;
            }
            Some(Expected {
                line: first + out_start + 1,
                lines: body[out_start..j].iter().map(|l| (*l).to_owned()).collect(),
            })
        } else {
            None
        };
        steps.push(Step {
            line: first + start + 1,
            command,
            transcript,
            expect,
        });
    }
    Ok(steps)
}

/// Whether bash reads the next line as part of this command: after a `\\`, or after a pipe or
/// `&&`/`||` that has nothing on its right yet.
fn continues(command: &str) -> bool {
    let command = command.trim_end();
    command.ends_with('\\') || command.ends_with('|') || command.ends_with("&&")
}

#[cfg(test)]
mod tests {
    use super::*;

    const README: &str = "\
# X
```sh
not-in-the-tour
```
## Tour
<!-- tour: skip needs a compiler -->
```sh
cargo build
```

```sh
$ a --flag
out 1
out 2

$ b

b \\
  --more |
  c &
# a comment
```

```text
shown
```

<!-- tour: skip not shell -->
```python
print()
```
";

    #[test]
    fn blocks_become_steps_outputs_and_skips() {
        let tour = read_tour(README).unwrap();
        let step = |line, command: &str, transcript, expect: Option<(usize, &[&str])>| Step {
            line,
            command: command.to_owned(),
            transcript,
            expect: expect.map(|(line, lines)| Expected {
                line,
                lines: lines.iter().map(|l| (*l).to_owned()).collect(),
            }),
        };
        assert_eq!(
            tour.steps,
            vec![
                step(12, "a --flag", true, Some((13, &["out 1", "out 2"]))),
                step(16, "b", true, Some((17, &[]))),
                step(18, "b \\\n  --more |\n  c &", false, Some((25, &["shown"]))),
            ]
        );
        assert_eq!(
            tour.skipped,
            vec![
                Skipped {
                    line: 7,
                    lang: "sh".into(),
                    reason: "needs a compiler".into()
                },
                Skipped {
                    line: 29,
                    lang: "python".into(),
                    reason: "not shell".into()
                },
            ]
        );
    }

    #[test]
    fn an_unmarked_block_that_is_not_run_is_an_error() {
        let err = read_tour("## Tour\n```toml\na = 1\n```\n").unwrap_err();
        assert!(err.contains("README.md:2: a ```toml block"), "{err}");
        let err = read_tour("## Tour\ntext\n```text\nout\n```\n").unwrap_err();
        assert!(err.contains("README.md:3"), "{err}");
    }
}
