//! Progress bars for long runs (`indicatif`, on standard error): a spinner with a count while a
//! step's size is unknown (imports, syncs), a bar with a rate and an estimate once it is known
//! (exports). Hidden when standard error is not a terminal, so logs and tests see only the
//! one-line step reports.

use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use model::ConnectorId;
use sync_runner::{Progress, Step, StepReport};

/// One bar per running step.
#[derive(Default)]
pub struct Bars {
    current: Mutex<Option<ProgressBar>>,
}

impl Bars {
    fn with_bar(&self, work: impl FnOnce(&ProgressBar)) {
        if let Some(bar) = self.current.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).as_ref() {
            work(bar);
        }
    }
}

/// A spinner with a running count for a step outside the runner (password hash sync).
pub fn spinner(prefix: &str, message: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(style("   {spinner} {prefix:<18} {msg:<13} {human_pos} objects  {elapsed}"));
    bar.set_prefix(prefix.to_string());
    bar.set_message(message.to_string());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_spinner())
}

impl Progress for Bars {
    fn step_started(&self, connector: &ConnectorId, step: Step) {
        let bar = ProgressBar::new_spinner();
        bar.set_style(style("   {spinner} {prefix:<18} {msg:<13} {human_pos} objects  {elapsed}"));
        bar.set_prefix(connector.0.clone());
        bar.set_message(step.name());
        bar.enable_steady_tick(Duration::from_millis(120));
        *self.current.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(bar);
    }

    fn total(&self, total: u64) {
        self.with_bar(|bar| {
            bar.set_length(total);
            bar.set_style(style("   {prefix:<18} {msg:<13} [{bar:30}] {human_pos}/{human_len}  {per_sec}  eta {eta}"));
        });
    }

    fn advanced(&self, count: u64) {
        self.with_bar(|bar| bar.inc(count));
    }

    fn step_finished(&self, _report: &StepReport) {
        if let Some(bar) = self.current.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take() {
            bar.finish_and_clear();
        }
    }
}
