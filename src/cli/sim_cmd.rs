//! `skyrules sim`: the SkyLight simulator alone, on a local port.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::config::{parse_duration, API_KEY_ENV};
use crate::sim::{SimConfig, TrafficConfig};

/// Flags of `skyrules sim`.
#[derive(Debug, Args)]
pub(crate) struct SimArgs {
    /// Port to listen on (0 picks a free one)
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Address to bind; the simulator has no real security, keep it local
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// Seed for the traffic generator and the bot (same seed, same visitors)
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// New visitors per simulated minute; 0 for no generated traffic
    #[arg(long, default_value_t = 2.0)]
    rate: f64,
    /// Simulated seconds per real second
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Simulated time before the AI bot answers; `off` for a silent bot
    #[arg(long, default_value = "2s")]
    bot_delay: String,
}

/// The key the simulator accepts when SKYLIGHT_API_KEY is not set. It guards
/// nothing; it exists so clients exercise the header like they must in prod.
const DEFAULT_SIM_KEY: &str = "sim-key";

/// Runs the simulator until Ctrl-C or SIGTERM.
pub async fn run(a: SimArgs) -> anyhow::Result<ExitCode> {
    if !(a.rate >= 0.0 && a.rate.is_finite()) {
        return Err(super::UserError(format!("--rate must be 0 or more, not {}", a.rate)).into());
    }
    if !(a.speed > 0.0 && a.speed.is_finite()) {
        return Err(
            super::UserError(format!("--speed must be more than 0, not {}", a.speed)).into(),
        );
    }
    let bot_delay = match a.bot_delay.trim() {
        "off" | "none" => None,
        d => Some(parse_duration(d).map_err(|e| super::UserError(format!("--bot-delay: {e}")))?),
    };
    let (api_key, key_note) = match std::env::var(API_KEY_ENV) {
        Ok(k) if !k.trim().is_empty() => {
            (k.trim().to_string(), format!("the key in {API_KEY_ENV}"))
        }
        _ => (
            DEFAULT_SIM_KEY.to_string(),
            format!("key {DEFAULT_SIM_KEY:?} (export {API_KEY_ENV}={DEFAULT_SIM_KEY})"),
        ),
    };
    let config = SimConfig {
        api_key,
        seed: a.seed,
        bot_delay,
        clock_speed: a.speed,
        traffic: (a.rate > 0.0).then_some(TrafficConfig {
            rate_per_min: a.rate,
        }),
    };
    let shutdown = CancellationToken::new();
    let addr = SocketAddr::new(a.bind, a.port);
    let handle = crate::sim::start(config, addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    println!("SkyLight simulator listening");
    println!("  base URL   {}", handle.base_url());
    println!("  control    {}", handle.control_url());
    println!("  accepting  {key_note}");
    println!(
        "Try: skyrules --base-url {} sessions list --all",
        handle.base_url()
    );
    let stop = shutdown.clone();
    tokio::spawn(async move {
        crate::shutdown::signal().await;
        stop.cancel();
    });
    shutdown.cancelled().await;
    handle.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
