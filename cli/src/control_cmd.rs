//! `vagus control replay`: the control loop's record run again offline.

use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum ControlCommand {
    /// Run the controller and the reconfigurer over a record `vagus brain
    /// --control-record` wrote and check that they take the same actions and
    /// steps; prints the ticks, actions, rounds and steps replayed as JSON.
    Replay {
        /// The record (JSON lines: the settings, then one tick a line).
        record: PathBuf,
    },
}

pub fn run(c: ControlCommand) -> anyhow::Result<()> {
    match c {
        ControlCommand::Replay { record } => {
            let r = vagus_brain::control::replay_record(&record).map_err(anyhow::Error::msg)?;
            println!(
                "{}",
                serde_json::json!({"ticks": r.ticks, "actions": r.actions,
                    "reconfig_rounds": r.reconfig_rounds, "reconfig_changes": r.reconfig_changes,
                    "same": true})
            );
            Ok(())
        }
    }
}
