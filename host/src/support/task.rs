//! Spawned tasks tied to their caller.

/// A spawned task that is aborted when its handle is dropped: work done
/// for a caller stops when the caller goes (a client hanging up).
pub struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    /// Wraps a spawned task.
    pub fn new(task: tokio::task::JoinHandle<T>) -> AbortOnDrop<T> {
        AbortOnDrop(task)
    }

    /// Waits for the task's output (an error if it panicked).
    pub async fn wait(mut self) -> Result<T, tokio::task::JoinError> {
        (&mut self.0).await
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
