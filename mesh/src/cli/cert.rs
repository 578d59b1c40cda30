//! `starling cert`: a development CA and node certificates for mesh links
//! and for the TLS client port.

use std::error::Error;
use std::path::Path;
use std::process::ExitCode;

use super::{CertArgs, CertCommand};
use crate::cluster::tls::{WrittenPair, write_ca, write_node_certificate};

pub(super) fn run(args: CertArgs) -> Result<ExitCode, Box<dyn Error>> {
    match args.command {
        CertCommand::Ca { dir } => {
            std::fs::create_dir_all(&dir)?;
            let written = write_ca(&dir)?;
            print_written(&written);
            println!(
                "next: starling cert node NAME --dir {} (one per node)",
                dir.display()
            );
        }
        CertCommand::Node { name, dir, san } => {
            let written = write_node_certificate(&dir, &name, &san)?;
            print_written(&written);
            let ca = dir.join("ca.pem");
            println!(
                "use: starling node --name {name} --tls-cert {} --tls-key {} --tls-ca {}",
                written.cert.display(),
                written.key.display(),
                ca.display()
            );
            println!(
                "or, for the TLS client port: starling node --client-tls-cert {} --client-tls-key {} \
                 (clients: --server tls://HOST:PORT --ca {})",
                written.cert.display(),
                written.key.display(),
                ca.display()
            );
        }
        CertCommand::Cluster { names, dir } => {
            std::fs::create_dir_all(&dir)?;
            if !complete(&dir, "ca") {
                print_written(&write_ca(&dir)?);
            }
            for name in &names {
                if !complete(&dir, name) {
                    print_written(&write_node_certificate(&dir, name, &[])?);
                }
            }
            println!(
                "{}: a CA and certificates for {}",
                dir.display(),
                names.join(", ")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_written(written: &WrittenPair) {
    println!("wrote {}", written.cert.display());
    println!("wrote {}", written.key.display());
}

/// Whether `dir` holds both `NAME.pem` and `NAME-key.pem`. Half a pair is
/// not complete: writing it again fails, saying which file is in the way.
fn complete(dir: &Path, name: &str) -> bool {
    dir.join(format!("{name}.pem")).exists() && dir.join(format!("{name}-key.pem")).exists()
}
