//! What can stop a bench, each naming the step (a measurement) and, where
//! it helps, how to fix it.

use crate::error::Failure;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{step}")]
    Tool {
        step: String,
        #[source]
        source: crate::host::tool::ToolError,
    },
    #[error("{step}: `{command}` failed (exit {}): {stderr}", status.map_or("by signal".to_string(), |s| s.to_string()))]
    Command { step: String, command: String, status: Option<i32>, stderr: String },
    #[error("{step}: `{command}` printed no JSON report: {detail}")]
    Report { step: String, command: String, detail: String },
    #[error("{step}: the report has no {field}")]
    Field { step: String, field: String },
    #[error("{step}: cannot {action} {}", path.display())]
    Io {
        step: String,
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{step}: gave up after {} s waiting for {what}", waited.as_secs())]
    Timeout { step: String, what: String, waited: std::time::Duration },
    #[error("the stall prober cannot enter the lab's namespace {netns}")]
    Netns {
        netns: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{step}: libvirt")]
    Libvirt {
        step: String,
        #[source]
        source: Box<crate::hypervisor::HvError>,
    },
    #[error("{step}")]
    Lab {
        step: String,
        #[source]
        source: Box<super::super::LabError>,
    },
    #[error("the lab '{lab}' is not up (no config at {})", config.display())]
    LabNotUp { lab: String, config: PathBuf },
    #[error("missing tool {tool} (Debian package {package})")]
    MissingTool { tool: &'static str, package: &'static str },
    #[error("unknown measurement family {name:?} (known: stall, data, memory, scale, hosts)")]
    UnknownFamily { name: String },
    #[error("the hosts family needs a two-host lab, and lab '{lab}' has one host")]
    NotTwoHosts { lab: String },
}

impl BenchError {
    pub fn hint(&self) -> Option<String> {
        let hint = match self {
            BenchError::LabNotUp { lab, .. } => format!("bring it up first: `envclone lab up --lab {lab}`"),
            BenchError::MissingTool { .. } => "install it: `scripts/install-deps.sh` (as root)".into(),
            BenchError::Netns { .. } => "the bench runs as root, on a lab that is up".into(),
            BenchError::NotTwoHosts { lab } => format!(
                "name another lab with `--hosts-lab NAME` (brought up with two hosts if it is not up), or take \
                 '{lab}' down first"
            ),
            BenchError::Timeout { .. } => {
                "the host may be overloaded (TCG guests, other labs); `envclone lab status` shows what runs".into()
            }
            BenchError::Command { .. } | BenchError::Tool { .. } | BenchError::Report { .. } => {
                "the bench leaves its environments in the lab's extra/ directory until the next run; \
                 `envclone --config <lab>/extra/envclone.toml ...` inspects them, `envclone lab down` removes all"
                    .into()
            }
            BenchError::Lab { source, .. } => return source.hint(),
            BenchError::Libvirt { source, .. } => return source.hint(),
            _ => return None,
        };
        Some(hint)
    }

    pub fn lab(step: impl Into<String>) -> impl FnOnce(super::super::LabError) -> BenchError {
        let step = step.into();
        move |source| BenchError::Lab { step, source: Box::new(source) }
    }

    pub fn libvirt(step: impl Into<String>) -> impl FnOnce(crate::hypervisor::HvError) -> BenchError {
        let step = step.into();
        move |source| BenchError::Libvirt { step, source: Box::new(source) }
    }

    pub fn io(step: &str, action: &'static str, path: &std::path::Path) -> impl FnOnce(std::io::Error) -> BenchError {
        let step = step.to_string();
        let path = path.to_path_buf();
        move |source| BenchError::Io { step, action, path, source }
    }
}
