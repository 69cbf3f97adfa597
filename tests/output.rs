//! Output that cannot be written changes no exit code: with stdout or stderr a pipe whose
//! reader has exited (`| head -c N`, a log collector gone) or a closed descriptor (`2>&-`),
//! every command still exits 0, 1 or 2 as docs/usage.md's "Exit codes" say (never 101, a panic,
//! nor a SIGPIPE death).

mod common;

use std::process::{Command, Stdio};

use common::*;

/// What one of mntreap's standard streams is connected to.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Sink {
    /// /dev/null: the stream works.
    Null,
    /// A pipe whose read end is closed everywhere: every write fails with EPIPE.
    ReaderGone,
    /// No descriptor at all (`>&-`, `2>&-`).
    Closed,
}

impl Sink {
    fn stdio(self) -> Stdio {
        match self {
            Sink::ReaderGone => {
                // CLOEXEC: no other child of this test process may inherit the read end.
                let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
                drop(read);
                Stdio::from(write)
            }
            Sink::Null | Sink::Closed => Stdio::null(),
        }
    }
}

/// Runs mntreap inside the sandbox with its stdout and stderr on the given sinks; returns
/// the exit code (`None`: killed by a signal) and a description for failure messages.
fn run(sb: &Sandbox, args: &[&str], out: Sink, err: Sink) -> (Option<i32>, String) {
    let mut redirect = String::new();
    if out == Sink::Closed {
        redirect.push_str(" >&-");
    }
    if err == Sink::Closed {
        redirect.push_str(" 2>&-");
    }
    // The shell closes the descriptors just before mntreap starts (nsenter, which runs
    // first, needs none of them).
    let status = Command::new("nsenter")
        .args(["-t", &sb.host_pid().to_string(), "-m", "--", "sh", "-c"])
        .arg(format!("exec \"$0\" \"$@\"{redirect}"))
        .arg(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.stdio())
        .stderr(err.stdio())
        .status()
        .unwrap();
    (
        status.code(),
        format!("mntreap {args:?}, stdout {out:?}, stderr {err:?}: {status:?}"),
    )
}

#[test]
fn unwritable_output_keeps_the_documented_exit_codes() {
    let mut sb = Sandbox::new("output");
    let target = format!("{}/t", sb.d());
    sb.sh(&format!(
        "mkdir -p {target} && mount -t tmpfs out {target} && echo data > {target}/file"
    ));
    let sinks = [
        (Sink::Null, Sink::ReaderGone),
        (Sink::ReaderGone, Sink::Null),
        (Sink::ReaderGone, Sink::ReaderGone),
        (Sink::Null, Sink::Closed),
        (Sink::Closed, Sink::Null),
        (Sink::Closed, Sink::Closed),
    ];
    let release = ["release", "--any-path", "--path", &target];
    for (out, err) in sinks {
        // 0: a leaked copy released; the report goes to stdout, the audit line to stderr.
        let leak = sb.holder(None, None);
        assert!(has_mount_at(leak, &target));
        let (code, what) = run(&sb, &release, out, err);
        assert_eq!(code, Some(0), "{what}");
        assert!(!has_mount_at(leak, &target), "{what}: the copy is released");

        // 1: a copy in use is detached but stays alive (audit line, report), and `-v`
        // scans log debug lines on stderr before reporting the finding.
        let pinned = sb.holder(Some(&format!("cd {target} && exec sleep 3600")), None);
        let (code, what) = run(
            &sb,
            &["-v", "scan", "--json", "--any-path", "--path", &target],
            out,
            err,
        );
        assert_eq!(code, Some(1), "{what}");
        let (code, what) = run(&sb, &release, out, err);
        assert_eq!(code, Some(1), "{what}");
        assert!(
            !has_mount_at(pinned, &target),
            "{what}: the copy is detached"
        );
        sb.kill_holder(pinned);

        // 2: bad input; the error line goes to stderr, nothing changes.
        let (code, what) = run(&sb, &["release", "--path", "/etc"], out, err);
        assert_eq!(code, Some(2), "{what}");
        // A usage error clap reports itself.
        let (code, what) = run(&sb, &["scan", "--no-such-flag"], out, err);
        assert_eq!(code, Some(2), "{what}");
        sb.kill_holder(leak);
    }
    assert!(
        has_mount_at(sb.host_pid(), &target),
        "mntreap's own copy stays"
    );
}

#[test]
fn the_agent_outlives_its_log_collector() {
    // The agent logs JSON lines on stdout; with the collector gone (both streams pipes
    // whose readers exited) it keeps serving and stops cleanly at SIGTERM.
    let sb = Sandbox::new("output-agent");
    let socket = format!("{}/hook.sock", sb.d());
    // The sandbox's directory is mounted in its namespace only.
    let seen = format!("/proc/{}/root{socket}", sb.host_pid());
    // Killed by pid even when the test fails.
    struct Running(std::process::Child);
    impl Drop for Running {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut agent = Running(
        Command::new("nsenter")
            .args(["-t", &sb.host_pid().to_string(), "-m", "--", BIN])
            .args(["agent", "--sweep-interval", "1", "--metrics-addr", "off"])
            .args(["--hook-socket", &socket, "--docker-root", &sb.d()])
            .stdin(Stdio::null())
            .stdout(Sink::ReaderGone.stdio())
            .stderr(Sink::ReaderGone.stdio())
            .spawn()
            .unwrap(),
    );
    let pid = agent.0.id() as i32;
    let exited = || agent_exited(pid);
    wait_until(
        std::time::Duration::from_secs(10),
        std::time::Duration::from_millis(20),
        || exited() || std::os::unix::net::UnixStream::connect(&seen).is_ok(),
        || "the agent did not start".to_string(),
    );
    // A few sweeps, each with its log lines.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    );
    let status = agent.0.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(
        !std::path::Path::new(&seen).exists(),
        "the hook socket is removed"
    );
}

/// Whether `pid` (a child of this process) has exited: a zombie or gone.
fn agent_exited(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z'))
        })
        .unwrap_or(true)
}
