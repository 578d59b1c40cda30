//! `starling cert`: a development CA and node certificates for mesh links.

use std::error::Error;
use std::process::ExitCode;

use super::{CertArgs, CertCommand};
use crate::cluster::tls::{write_ca, write_node_certificate};

pub(super) fn run(args: CertArgs) -> Result<ExitCode, Box<dyn Error>> {
    match args.command {
        CertCommand::Ca { dir } => {
            std::fs::create_dir_all(&dir)?;
            let written = write_ca(&dir)?;
            println!("wrote {}", written.cert.display());
            println!("wrote {}", written.key.display());
            println!(
                "next: starling cert node NAME --dir {} (one per node)",
                dir.display()
            );
        }
        CertCommand::Node { name, dir } => {
            let written = write_node_certificate(&dir, &name)?;
            println!("wrote {}", written.cert.display());
            println!("wrote {}", written.key.display());
            println!(
                "use: starling node --name {name} --tls-cert {} --tls-key {} --tls-ca {}",
                written.cert.display(),
                written.key.display(),
                dir.join("ca.pem").display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
