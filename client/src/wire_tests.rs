//! The client's frame reader against prost: whatever the bytes, it reads what prost
//! reads (or fails where prost fails); the frequent messages in their canonical form
//! are read field by field, not handed to prost.

use bytes::Bytes;
use proptest::prelude::*;
use prost::Message;
use squall_proto::v1::{self, response, server_message::Kind};

use super::{decode_server_message, fast};

fn prost_decode(bytes: &Bytes) -> Result<v1::ServerMessage, String> {
    v1::ServerMessage::decode(bytes.clone()).map_err(|e| e.to_string())
}

fn ours(bytes: &Bytes) -> Result<v1::ServerMessage, String> {
    decode_server_message(bytes.clone()).map_err(|e| e.to_string())
}

fn delivery() -> impl Strategy<Value = v1::Delivery> {
    (
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<u32>()),
        (any::<u32>(), any::<u64>(), any::<i32>(), any::<u64>()),
        proptest::collection::vec(any::<u8>(), 0..64),
        "[a-z0-9.:_-]{0,12}",
    )
        .prop_map(
            |(
                (subscription_id, task_id, lease_token, attempt),
                (max, deadline, priority, created),
                payload,
                queue,
            )| v1::Delivery {
                subscription_id,
                task_id,
                lease_token,
                attempt,
                max_attempts: max,
                deadline_ms: deadline,
                priority,
                payload: Bytes::from(payload),
                headers: Default::default(),
                created_at_ms: created,
                queue,
            },
        )
}

fn answer() -> impl Strategy<Value = v1::Response> {
    let result = prop_oneof![
        Just(None),
        Just(Some(response::Result::Ok(v1::Empty {}))),
        Just(Some(response::Result::Pong(v1::Pong {}))),
        proptest::collection::vec((any::<u64>(), any::<bool>()), 0..5).prop_map(|tasks| {
            Some(response::Result::Publish(v1::PublishOk {
                tasks: tasks
                    .into_iter()
                    .map(|(task_id, duplicate)| v1::Published { task_id, duplicate })
                    .collect(),
            }))
        }),
    ];
    (any::<u64>(), result).prop_map(|(id, result)| v1::Response { id, result })
}

/// A frequent message in the broker's (prost's) canonical encoding.
fn frequent() -> impl Strategy<Value = v1::ServerMessage> {
    prop_oneof![
        delivery().prop_map(|d| v1::ServerMessage {
            kind: Some(Kind::Delivery(d))
        }),
        answer().prop_map(|r| v1::ServerMessage {
            kind: Some(Kind::Response(r))
        }),
    ]
}

/// `bytes` with one of: a byte changed, a byte dropped, a byte inserted, or the two
/// halves swapped.
fn damage(bytes: &[u8], how: u8, at: usize, byte: u8) -> Vec<u8> {
    let mut out = bytes.to_vec();
    if out.is_empty() {
        out.push(byte);
        return out;
    }
    let at = at % out.len();
    match how % 4 {
        0 => out[at] = byte,
        1 => {
            out.remove(at);
        }
        2 => out.insert(at, byte),
        _ => out.rotate_left(at),
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn frequent_messages_are_read_field_by_field_as_prost_reads_them(m in frequent()) {
        let bytes = Bytes::from(m.encode_to_vec());
        let read = fast(&bytes);
        prop_assert!(read.is_some(), "not read field by field: {m:?}");
        prop_assert_eq!(read.unwrap(), m.clone());
        prop_assert_eq!(ours(&bytes), prost_decode(&bytes));
    }

    #[test]
    fn damaged_messages_are_read_as_prost_reads_them(
        m in frequent(), how in any::<u8>(), at in any::<usize>(), byte in any::<u8>()
    ) {
        let bytes = Bytes::from(damage(&m.encode_to_vec(), how, at, byte));
        prop_assert_eq!(ours(&bytes), prost_decode(&bytes));
    }

    #[test]
    fn arbitrary_bytes_are_read_as_prost_reads_them(
        bytes in proptest::collection::vec(any::<u8>(), 0..96)
    ) {
        let bytes = Bytes::from(bytes);
        prop_assert_eq!(ours(&bytes), prost_decode(&bytes));
    }

    /// Two messages' encodings one after the other: prost merges them (a field given
    /// twice), which is left to prost.
    #[test]
    fn concatenated_messages_are_read_as_prost_merges_them(a in frequent(), b in frequent()) {
        let mut bytes = a.encode_to_vec();
        bytes.extend(b.encode_to_vec());
        let bytes = Bytes::from(bytes);
        prop_assert_eq!(ours(&bytes), prost_decode(&bytes));
    }
}

#[test]
fn a_delivery_with_headers_and_other_answers_are_left_to_prost() {
    let mut headers = std::collections::BTreeMap::new();
    headers.insert("k".to_owned(), Bytes::from_static(b"v"));
    let with_headers = v1::ServerMessage {
        kind: Some(Kind::Delivery(v1::Delivery {
            task_id: 7,
            headers,
            ..Default::default()
        })),
    };
    let error = v1::ServerMessage {
        kind: Some(Kind::Response(v1::Response {
            id: 3,
            result: Some(response::Result::Error(v1::Error {
                code: 5,
                message: "no".into(),
            })),
        })),
    };
    for m in [with_headers, error] {
        let bytes = Bytes::from(m.encode_to_vec());
        assert!(fast(&bytes).is_none(), "{m:?}");
        assert_eq!(ours(&bytes), Ok(m));
    }
}

/// Values prost reads by its own rules, not as written: a bool that is 2, a uint32 and
/// an int32 sent as 64-bit varints (their low 32 bits), a negative priority.
#[test]
fn out_of_range_scalars_are_read_as_prost_reads_them() {
    use squall_proto::fields::{put_message_head, put_varint_field};
    let mut published = Vec::new();
    put_varint_field(&mut published, 1, 9);
    put_varint_field(&mut published, 2, 2);
    let mut publish_ok = Vec::new();
    put_message_head(&mut publish_ok, 1, published.len());
    publish_ok.extend_from_slice(&published);
    let mut response = Vec::new();
    put_varint_field(&mut response, 1, 4);
    put_message_head(&mut response, 11, publish_ok.len());
    response.extend_from_slice(&publish_ok);
    let mut delivery = Vec::new();
    put_varint_field(&mut delivery, 4, (1 << 32) + 5);
    put_varint_field(&mut delivery, 5, u64::MAX);
    put_varint_field(&mut delivery, 7, (-3i64) as u64);
    for (number, body) in [(1, response), (2, delivery)] {
        let mut frame = Vec::new();
        put_message_head(&mut frame, number, body.len());
        frame.extend_from_slice(&body);
        let bytes = Bytes::from(frame);
        assert!(fast(&bytes).is_some());
        assert_eq!(ours(&bytes), prost_decode(&bytes));
    }
}

/// A scalar given twice is read field by field as prost reads it, the last one; a
/// publish answer's oneof given twice is left to prost, which merges the two.
#[test]
fn a_scalar_given_twice_is_the_last_one_and_a_oneof_twice_is_prosts() {
    use squall_proto::fields::{put_bytes_field, put_message_head, put_varint_field};
    let mut delivery = Vec::new();
    put_varint_field(&mut delivery, 2, 7);
    put_bytes_field(&mut delivery, 11, b"first");
    put_varint_field(&mut delivery, 2, 8);
    put_bytes_field(&mut delivery, 11, b"second");
    let mut published = Vec::new();
    put_varint_field(&mut published, 1, 5);
    let mut publish_ok = Vec::new();
    put_message_head(&mut publish_ok, 1, published.len());
    publish_ok.extend_from_slice(&published);
    let mut twice = Vec::new();
    for _ in 0..2 {
        put_message_head(&mut twice, 11, publish_ok.len());
        twice.extend_from_slice(&publish_ok);
    }
    for (number, body, field_by_field) in [(2, delivery, true), (1, twice, false)] {
        let mut frame = Vec::new();
        put_message_head(&mut frame, number, body.len());
        frame.extend_from_slice(&body);
        let bytes = Bytes::from(frame);
        assert_eq!(fast(&bytes).is_some(), field_by_field);
        assert_eq!(ours(&bytes), prost_decode(&bytes));
    }
}
