//! The one way mntreap writes to its standard output and standard error.
//!
//! Rust ignores SIGPIPE, so a write into a pipe whose reader is gone (`| head -c N`, a log
//! collector that died) fails with EPIPE instead of killing the process (exit 141), and
//! `println!`/`eprintln!` would turn that failure into a panic (exit 101). Scripts read
//! the exit code (docs/usage.md, "Exit codes"), so it must stay 0/1/2 whatever became of the
//! text: these writes drop their errors. A closed descriptor (`2>&-`) needs nothing here:
//! the standard library reopens fds 0-2 on /dev/null before `main`.

use std::io::Write;

/// Writes `text` on stdout (a report, a JSON document); a failed write is dropped.
pub fn stdout(text: &str) {
    write_quietly(&mut std::io::stdout().lock(), text.as_bytes());
}

/// Writes `line` and a newline on stderr (a note, an error); a failed write is dropped.
pub fn stderr_line(line: &str) {
    write_quietly(
        &mut std::io::stderr().lock(),
        format!("{line}\n").as_bytes(),
    );
}

fn write_quietly(out: &mut impl Write, bytes: &[u8]) {
    let _ = out.write_all(bytes);
    let _ = out.flush();
}
