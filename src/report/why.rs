//! `why` for people: one line per reason, then what to do about it.

use crate::engine::busy::{ProcessUse, Reason};
use crate::report::doc::{WhyDoc, WhyTarget};

/// The reasons as text, target by target.
pub fn why_text(doc: &WhyDoc) -> String {
    let mut out = String::new();
    if doc.targets.is_empty() {
        out.push_str("No mount of it is in view: nothing to explain.\n");
    }
    for t in &doc.targets {
        out.push_str(&target_text(t));
    }
    for n in &doc.notes {
        out.push_str(&format!("note: {n}\n"));
    }
    out
}

fn target_text(t: &WhyTarget) -> String {
    let mut out = format!(
        "{} (device {}{}) ",
        t.target,
        t.dev,
        t.block
            .as_ref()
            .map(|b| format!(", {b}"))
            .unwrap_or_default()
    );
    if !t.busy {
        out.push_str("is not busy: nothing in any mount namespace holds it.\n");
        return out;
    }
    out.push_str(&format!("is held {} way(s):\n", t.reasons.len()));
    for r in &t.reasons {
        out.push_str(&format!(
            "  {}\n      {}{}\n",
            line(&r.reason),
            if r.releasable { "[mntreap] " } else { "" },
            r.remedy
        ));
    }
    out
}

fn line(reason: &Reason) -> String {
    match reason {
        Reason::Mount {
            mnt_ns,
            own_namespace,
            mount_id,
            mount_point,
            pids,
            pinned_by,
            ..
        } => {
            let who = if *own_namespace {
                "mntreap's own".to_string()
            } else if pids.is_empty() {
                format!("no process, pinned by {}", pins(pinned_by))
            } else {
                format!("pids {}", list(pids))
            };
            format!(
                "mount      {mount_point} (mount {mount_id}) in mount namespace {mnt_ns} ({who})"
            )
        }
        Reason::Process {
            pid,
            comm,
            mnt_ns,
            via,
            path,
            fd,
        } => {
            let what = match via {
                ProcessUse::Cwd => "cwd".to_string(),
                ProcessUse::Root => "root".to_string(),
                ProcessUse::Exe => "exe".to_string(),
                ProcessUse::OpenFile => format!("open fd {}", fd.unwrap_or_default()),
                ProcessUse::Mmap => "mmap".to_string(),
                ProcessUse::OpenDevice => format!("device open on fd {}", fd.unwrap_or_default()),
            };
            format!(
                "process    pid {pid} ({comm}) {what}{}{}",
                path.as_ref().map(|p| format!(" {p}")).unwrap_or_default(),
                mnt_ns
                    .map(|n| format!(" [mount namespace {n}]"))
                    .unwrap_or_default()
            )
        }
        Reason::Loop {
            device,
            backing_file,
        } => format!("loop       {device} is backed by {backing_file}"),
        Reason::Swap { path } => format!("swap       {path}"),
        Reason::Holder { device } => format!("holder     {device} is stacked on it"),
        Reason::NoMount { evidence } => format!("no mount   {evidence}"),
    }
}

fn list(pids: &[i32]) -> String {
    let shown: Vec<String> = pids.iter().take(4).map(|p| p.to_string()).collect();
    let more = pids.len().saturating_sub(4);
    if more > 0 {
        format!("{} (+{more})", shown.join(","))
    } else {
        shown.join(",")
    }
}

fn pins(pinned_by: &[crate::engine::namespace::NsPin]) -> String {
    use crate::engine::namespace::NsPin;
    if pinned_by.is_empty() {
        return "something out of view".into();
    }
    pinned_by
        .iter()
        .map(|p| match p {
            NsPin::Bind { mnt_ns, path } => format!("an nsfs bind at {path} in {mnt_ns}"),
            NsPin::Descriptor { pid, comm, fd } => format!("fd {fd} of pid {pid} ({comm})"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}
