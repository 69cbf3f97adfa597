//! Man pages and shell completions from the command line's definition, for the Debian
//! package (packaging/deb/build.sh): `cargo run --example gen-docs -- OUT_DIR` writes
//! `OUT_DIR/man/mntreap.1`, one `mntreap-<command>.1` per command, and
//! `OUT_DIR/completions/{mntreap.bash,_mntreap,mntreap.fish}`.

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let out = PathBuf::from(std::env::args_os().nth(1).expect("usage: gen-docs OUT_DIR"));
    let man = out.join("man");
    std::fs::create_dir_all(&man)?;
    let cmd = mntreap::cli::command();
    clap_mangen::generate_to(cmd.clone(), &man)?;
    let completions = out.join("completions");
    std::fs::create_dir_all(&completions)?;
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        clap_complete::generate_to(shell, &mut cmd.clone(), "mntreap", &completions)?;
    }
    Ok(())
}
