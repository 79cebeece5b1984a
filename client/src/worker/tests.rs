//! Unit tests of the worker's pure parts: lease-extension timing, reasons, handler
//! outputs.

use std::time::UNIX_EPOCH;

use bytes::Bytes;

use super::*;

fn at(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

#[test]
fn lease_extension_follows_the_observed_lease() {
    let now = at(1_000_000);
    assert_eq!(observed_lease(1_030_000, now), Duration::from_secs(30));
    // A deadline in the past (clock skew) still assumes a sane minimum.
    assert_eq!(observed_lease(999_000, now), MIN_ASSUMED_LEASE);
    assert_eq!(
        first_extend_after(1_030_000, now, Duration::from_secs(30)),
        Duration::from_secs(10)
    );
    // A configured extension shorter than the lease wins.
    assert_eq!(
        first_extend_after(1_030_000, now, Duration::from_secs(3)),
        Duration::from_secs(1)
    );
    // Already past the deadline: extend at once.
    assert_eq!(
        first_extend_after(999_000, now, Duration::from_secs(30)),
        Duration::ZERO
    );
}

#[test]
fn task_errors_carry_their_action() {
    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);
    let e: TaskError = Outer(std::io::Error::other("inner")).into();
    assert_eq!(e.message(), "outer: inner");
    assert!(!e.is_dead());
    assert_eq!(e.retry_delay(), None);

    let e = TaskError::retry_after(Duration::from_secs(5), "busy");
    assert_eq!(e.retry_delay(), Some(Duration::from_secs(5)));
    assert_eq!(e.to_string(), "busy");

    let e = TaskError::dead("bad input");
    assert!(e.is_dead());
    assert_eq!(e.retry_delay(), None);
}

#[test]
fn handler_outputs_become_ack_results() {
    assert!(().into_result().is_empty());
    assert_eq!("x".to_owned().into_result(), Bytes::from_static(b"x"));
    assert_eq!(vec![1u8].into_result(), Bytes::from_static(&[1]));
    assert_eq!(
        Some(Bytes::from_static(b"r")).into_result(),
        Bytes::from_static(b"r")
    );
    assert!(None::<String>.into_result().is_empty());
}

#[test]
fn long_reasons_are_cut_on_a_char_boundary() {
    let long = "é".repeat(MAX_REASON_BYTES);
    let cut = truncate_reason(long);
    assert!(cut.len() <= MAX_REASON_BYTES);
    assert!(cut.chars().all(|c| c == 'é'));
    assert_eq!(truncate_reason("short".into()), "short");
}

#[test]
fn panic_messages_are_extracted() {
    let p: Box<dyn std::any::Any + Send> = Box::new("boom");
    assert_eq!(panic_message(&*p), "boom");
    let p: Box<dyn std::any::Any + Send> = Box::new(String::from("bang"));
    assert_eq!(panic_message(&*p), "bang");
    let p: Box<dyn std::any::Any + Send> = Box::new(7u8);
    assert_eq!(panic_message(&*p), "non-string panic payload");
}
