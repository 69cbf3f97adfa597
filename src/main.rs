//! The `mntreap` binary: everything lives in the library; see `mntreap::cli`.

fn main() -> std::process::ExitCode {
    mntreap::cli::main()
}
