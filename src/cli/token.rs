//! `squall token hash`: turns a token into the `[[auth.tokens]]` entry of the broker's
//! configuration, with a fresh salt. The token comes from the argument or from the
//! first line of standard input; it is never stored or printed, only its hash.

use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use squall::auth::{Role, TokenHash};

use super::{Exit, EXIT_USAGE};

/// Authentication tokens.
#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Print the configuration entry of a token (salted SHA-256 hash) to paste into
    /// the broker's configuration file.
    Hash(HashArgs),
}

#[derive(Args)]
struct HashArgs {
    /// The token; read from the first line of standard input when absent (safer: it
    /// stays out of the shell history and the process list).
    token: Option<String>,
    /// Name of the entry (who the token is for; shown in the broker's logs).
    #[arg(long, default_value = "client")]
    name: String,
    /// What the token may do: producer (publish, task status), consumer (subscribe,
    /// settle, task status) or admin (everything).
    #[arg(long, default_value = "producer")]
    role: String,
    /// Limit the token to queues whose names start with one of these prefixes
    /// (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "PREFIX,...")]
    queues: Vec<String>,
}

impl std::fmt::Debug for HashArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HashArgs")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("queues", &self.queues)
            .finish_non_exhaustive()
    }
}

fn usage(message: String) -> anyhow::Error {
    Exit {
        code: EXIT_USAGE,
        message,
    }
    .into()
}

pub fn run(args: TokenArgs) -> anyhow::Result<ExitCode> {
    let TokenCommand::Hash(args) = args.command;
    let role: Role = args.role.parse().map_err(usage)?;
    let token = match args.token {
        Some(t) => t,
        None => {
            if std::io::stdin().is_terminal() {
                eprintln!("token (one line, then Enter):");
            }
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            line.trim_end_matches(['\n', '\r']).to_owned()
        }
    };
    if token.is_empty() {
        return Err(usage("the token is empty".into()));
    }
    print!(
        "{}",
        entry(&args.name, role, &args.queues, &TokenHash::new(&token))
    );
    Ok(ExitCode::SUCCESS)
}

/// The TOML entry, in the order a reader expects.
fn entry(name: &str, role: Role, queues: &[String], hash: &TokenHash) -> String {
    let quote = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let mut out = format!(
        "[[auth.tokens]]\nname = {}\nrole = \"{role}\"\nhash = \"{hash}\"\n",
        quote(name)
    );
    if !queues.is_empty() {
        let list: Vec<String> = queues.iter().map(|q| quote(q)).collect();
        out.push_str(&format!("queues = [{}]\n", list.join(", ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_entry_loads_as_configuration_and_accepts_the_token() {
        let text = entry(
            "billing",
            Role::Producer,
            &["billing.".into()],
            &TokenHash::new("t0ken"),
        );
        assert!(!text.contains("t0ken"), "{text}");
        let mut s = squall::config::Settings::default();
        s.apply_toml(&text).unwrap();
        let grant = s.server.auth.authenticate("t0ken").expect("accepted");
        assert!(grant.allows_queue("billing.x") && !grant.allows_queue("hr"));
        assert!(s.server.auth.authenticate("other").is_none());
    }
}
