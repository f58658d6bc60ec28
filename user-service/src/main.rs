//! The user-service binary: configuration from the environment, migrate, then serve until Ctrl-C or SIGTERM.

use user_service::{config::Settings, startup::Application};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::telemetry::init("user-service");
    let settings = Settings::from_env()?;
    Application::build(settings).await?.run_until_stopped(common::shutdown::signal()).await
}
