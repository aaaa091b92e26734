//! `skyrules demo`: flags, and Ctrl-C handling around [`crate::demo`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use tokio_util::sync::CancellationToken;

use super::UserError;
use crate::config::parse_duration;
use crate::tools::demo::DemoOptions;

/// Flags of `skyrules demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Rules directory (the built-in rules when it does not exist)
    #[arg(long = "rules", default_value = "rules", value_name = "DIR")]
    rules_dir: PathBuf,
    /// Traffic seed (same seed, same visitors)
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// New visitors per simulated minute
    #[arg(long, default_value_t = 0.4)]
    rate: f64,
    /// Simulated seconds per real second
    #[arg(long, default_value_t = 60.0)]
    speed: f64,
    /// Real time between polls
    #[arg(long, default_value = "1s")]
    poll_interval: String,
    /// Stop after this long (real time), e.g. 60s; default: until Ctrl-C
    #[arg(long = "for", value_name = "DURATION")]
    duration: Option<String>,
    /// Narrate what would be done, take no action
    #[arg(long)]
    dry_run: bool,
    /// Serve the status page and metrics here (another port if taken)
    #[arg(long, default_value = "127.0.0.1:9187", value_name = "ADDR")]
    listen: std::net::SocketAddr,
    /// Do not serve the status page
    #[arg(long)]
    no_listen: bool,
}

/// Runs the demo until Ctrl-C (or `--for`).
pub async fn run(a: DemoArgs) -> anyhow::Result<ExitCode> {
    let dur = |flag: &str, v: &str| -> Result<Duration, UserError> {
        parse_duration(v).map_err(|e| UserError(format!("{flag}: {e}")))
    };
    if !(a.rate > 0.0 && a.rate.is_finite() && a.speed > 0.0 && a.speed.is_finite()) {
        return Err(UserError("--rate and --speed must be more than 0".into()).into());
    }
    // The shipped rules' calendar and channel names come from
    // ./skyrules.toml when it is there (secrets are not needed: the demo
    // sends nothing).
    let config = crate::config::Config::load(None, &crate::config::Overrides::default())?;
    let opts = DemoOptions {
        calendars: config.calendars()?,
        channels: config.notify.keys().cloned().collect(),
        rules_dir: a.rules_dir,
        seed: a.seed,
        rate: a.rate,
        speed: a.speed,
        poll_interval: dur("--poll-interval", &a.poll_interval)?,
        duration: a.duration.as_deref().map(|d| dur("--for", d)).transpose()?,
        dry_run: a.dry_run,
        listen: (!a.no_listen).then_some(a.listen),
    };
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        crate::shutdown::signal().await;
        stop.cancel();
    });
    let mut out = std::io::stdout();
    crate::tools::demo::run(opts, shutdown, &mut out).await?;
    Ok(ExitCode::SUCCESS)
}
