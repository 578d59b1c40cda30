//! `starling passwd`: reads a password on standard input (one line, or all
//! of it without a newline) and prints its argon2id PHC hash, for a
//! `[[users]]` table's `password`.

use std::error::Error;
use std::io::Read;
use std::process::ExitCode;

use starling_transport::auth::hash_password;

pub(super) fn run() -> Result<ExitCode, Box<dyn Error>> {
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input)?;
    // `echo pw | starling passwd` and a file without a final newline mean
    // the same password.
    let password = input.strip_suffix('\n').map_or(input.as_str(), |line| {
        line.strip_suffix('\r').unwrap_or(line)
    });
    if password.is_empty() {
        return Err("no password on standard input".into());
    }
    if password.contains('\n') {
        return Err("the password is more than one line".into());
    }
    println!("{}", hash_password(password));
    Ok(ExitCode::SUCCESS)
}
