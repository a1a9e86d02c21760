//! Long work shown as it goes: on a terminal, one line that moves (an
//! indicatif bar when the tool says how far it is — `docker build`'s
//! `[3/7]` — a spinner with the latest line otherwise); elsewhere (CI, a pipe), the
//! tool's lines as they come. Either way a failure shows the last lines.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, IsTerminal};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};

use crate::util;

/// Lines kept to show when the command fails.
const TAIL: usize = 40;

/// Runs `cmd` (`what` names it), its output shown as progress; fails with
/// its last lines when it fails.
pub fn run(what: &str, cmd: &mut Command) -> anyhow::Result<()> {
    let terminal = std::io::stderr().is_terminal();
    // Both streams through one pipe, in the order they were written.
    let (reader, writer) = std::io::pipe().context("a pipe for the command's output")?;
    let mut child = cmd
        .stdout(writer.try_clone()?)
        .stderr(writer)
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    // The pipe's write ends now live in the child only: EOF when it exits.
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let bar = terminal.then(|| {
        let bar = ProgressBar::new_spinner().with_prefix(what.to_owned());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix} {elapsed} {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    });
    let mut tail: VecDeque<String> = VecDeque::with_capacity(TAIL);
    for line in BufReader::new(reader).lines() {
        let line = line.unwrap_or_default();
        match &bar {
            Some(bar) => {
                if let Some((done, all)) = steps(&line) {
                    if bar.length().is_none() {
                        bar.set_style(
                            ProgressStyle::with_template("{prefix} {elapsed} [{bar:30}] {pos}/{len} {wide_msg}")
                                .unwrap_or_else(|_| ProgressStyle::default_bar())
                                .progress_chars("=> "),
                        );
                    }
                    bar.set_length(all);
                    bar.set_position(done);
                }
                bar.set_message(line.trim().chars().take(200).collect::<String>());
            }
            None => util::out(&line),
        }
        if tail.len() == TAIL {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    let status = child.wait()?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if !status.success() {
        let last: Vec<String> = tail.into_iter().collect();
        bail!("{what} failed ({status}); its last lines:\n{}", last.join("\n"));
    }
    Ok(())
}

/// How far a tool says it is, from one of its lines: `docker build`'s
/// `#5 [3/7] RUN …` (`[stage 3/7]` in a multi-stage build), or the legacy
/// builder's `Step 3/7 : RUN …`. Other tools' lines only move the spinner.
fn steps(line: &str) -> Option<(u64, u64)> {
    // The legacy builder's `Step 3/7 : RUN …`.
    if let Some((count, _)) = line.strip_prefix("Step ").and_then(|r| r.split_once(" :")) {
        return count_of(count);
    }
    let open = line.find('[')?;
    let close = open + line[open..].find(']')?;
    count_of(line[open + 1..close].rsplit(' ').next()?)
}

/// `3/7`.
fn count_of(s: &str) -> Option<(u64, u64)> {
    let (done, all) = s.split_once('/')?;
    let (done, all) = (done.trim().parse::<u64>().ok()?, all.trim().parse::<u64>().ok()?);
    (done <= all && all > 0).then_some((done, all))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_builds_say_their_step() {
        assert_eq!(steps("#7 [3/7] RUN apt-get update"), Some((3, 7)));
        assert_eq!(steps("#9 [stage-1 2/4] COPY . ."), Some((2, 4)));
        assert_eq!(steps("#2 [internal] load metadata"), None);
        assert_eq!(steps("Step 2/5 : RUN x"), Some((2, 5)));
        assert_eq!(steps("[9/3]"), None);
        assert_eq!(steps("I: Retrieving InRelease"), None);
    }

    #[test]
    fn a_failing_command_says_its_last_lines() {
        let e = run("a test", Command::new("sh").args(["-c", "echo one; echo two >&2; exit 3"])).unwrap_err();
        let e = e.to_string();
        assert!(e.contains("a test failed") && e.contains("one\ntwo"), "{e}");
        run("a test", Command::new("true").arg("x")).unwrap();
    }
}
