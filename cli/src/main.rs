//! `tracer`: the command-line front end. It parses what the user asked for, composes the pipeline's
//! crates (region, agent, drain, timer, shutdown) for recording, and reads sessions back.
//!
//! Exit codes: 0 when the trace was completed cleanly (whatever the target did), 2 for bad
//! arguments, 1 for the tracer's own failures at run time; every failure is one line on stderr.

mod args;
mod attach;
mod error;
mod failure;
mod names;
mod processes;
mod read;
mod record;
mod symbols;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let mut cli = match args::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    if let args::Command::Spawn(spawn) = &mut cli.command {
        if let Err(reason) = spawn.resolve() {
            eprintln!("tracer: {}", read::clean(&reason));
            return ExitCode::from(2);
        }
    }
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tracer: {}", read::clean(&e.render()));
            ExitCode::from(e.exit_code())
        }
    }
}

fn run(command: args::Command) -> Result<ExitCode, error::CliError> {
    use args::Command;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match command {
        Command::Spawn(a) => return record::spawn(a),
        Command::Attach(a) => return attach::attach(a),
        Command::Info(a) => read::info(&a, &mut out)?,
        Command::Replay(a) => read::replay(&a, &mut out)?,
        Command::Report(a) => read::report(&a, &mut out)?,
        Command::Export(a) => read::export(&a, &mut out)?,
    }
    use std::io::Write;
    match out.flush() {
        // A closed pipe (`tracer replay s | head`) is the reader's choice, not a failure.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(e) => return Err(read::ReadFailure::WriteOutput(e).into()),
        Ok(()) => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// Help and version go to stdout with status 0; anything else is one line on stderr, status 2.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::from(2)
        }
        _ => {
            let rendered = e.render().to_string();
            // clap's message is the first paragraph (usage and tips follow a blank line).
            let message: Vec<&str> = rendered
                .lines()
                .map(str::trim)
                .take_while(|l| !l.is_empty())
                .collect();
            let joined = message.join(" ");
            let line = read::clean(joined.trim_start_matches("error: ")).into_owned();
            match e.kind() {
                ErrorKind::ValueValidation | ErrorKind::InvalidValue => eprintln!("tracer: {line}"),
                _ => eprintln!("tracer: {line}; see `tracer --help`"),
            }
            ExitCode::from(2)
        }
    }
}
