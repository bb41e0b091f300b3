use std::{io, process::ExitStatus, time::Duration};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {error}")]
    Io { what: String, error: io::Error },
    #[error("the agent exited at start-up ({status}):\n{log}")]
    AgentExited { status: ExitStatus, log: String },
    #[error("the agent did not log its address and serve within {within:?}:\n{log}")]
    AgentNotServing { within: Duration, log: String },
    #[error("the agent did not stop within {within:?} of SIGTERM:\n{log}")]
    AgentDidNotStop { within: Duration, log: String },
    #[error("{name} did not print READY within {within:?}")]
    NotReady { name: String, within: Duration },
    #[error("cc failed on {program}: {status}")]
    Compile { program: String, status: ExitStatus },
    #[error(
        "the idle population did not settle within {within:?}: \
         {settled} of {expected} threads asleep in their final wait"
    )]
    NotSettled {
        settled: usize,
        expected: usize,
        within: Duration,
    },
    #[error("{name} did not finish within {within:?}")]
    DidNotFinish { name: String, within: Duration },
}

impl Error {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let what = what.into();
        move |error| Error::Io { what, error }
    }
}
