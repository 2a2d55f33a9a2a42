//! `sluice cert`: the self-signed certificate `sluice dev` makes, written to
//! a folder of your choice (for the benchmark peers, which must all serve
//! the same certificate), and optionally an HMAC secret beside it.

use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `sluice cert`.
#[derive(clap::Args)]
pub struct CertArgs {
    /// The folder to write `cert.pem` and `key.pem` to (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Also write `secret.key`, a random HMAC secret (64 hex characters).
    #[arg(long)]
    secret: bool,
    /// Replace files that exist (by default they are kept).
    #[arg(long)]
    force: bool,
}

/// Write the files and print their paths.
pub fn run(args: &CertArgs) -> anyhow::Result<ExitCode> {
    for path in write(args)? {
        println!("{}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn write(args: &CertArgs) -> anyhow::Result<Vec<PathBuf>> {
    let (cert, key) = sluice::dev_files::write_cert(&args.out, args.force)?;
    let mut written = vec![cert, key];
    if args.secret {
        written.push(sluice::dev_files::write_secret(&args.out, args.force)?);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_usable_pair_once_and_replaces_it_only_when_forced() {
        let dir = std::env::temp_dir().join(format!("sluice-cert-test-{}", std::process::id()));
        let args = |secret, force| CertArgs {
            out: dir.clone(),
            secret,
            force,
        };
        let paths = write(&args(true, false)).unwrap();
        assert_eq!(paths.len(), 3);
        // The server's own TLS loader takes the pair.
        sluice::server::tls::server_config(&paths[0], &paths[1]).unwrap();
        let pem = std::fs::read_to_string(&paths[0]).unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
        let secret = std::fs::read_to_string(&paths[2]).unwrap();
        assert_eq!(secret.len(), 64);
        assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()));
        #[cfg(unix)]
        for private in [&paths[1], &paths[2]] {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(private).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", private.display());
        }

        write(&args(true, false)).unwrap();
        assert_eq!(std::fs::read_to_string(&paths[0]).unwrap(), pem);
        assert_eq!(std::fs::read_to_string(&paths[2]).unwrap(), secret);

        write(&args(true, true)).unwrap();
        assert_ne!(std::fs::read_to_string(&paths[0]).unwrap(), pem);
        assert_ne!(std::fs::read_to_string(&paths[2]).unwrap(), secret);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
