//! A push whose last section's values travel apart from the rest of the
//! frame (a stashed row: `Endpoint::send_stashed`) decodes to the same
//! message as the whole frame, and a tail cut anywhere else is refused.

use laggard::proto::{
    DEFAULT_MAX_PAYLOAD, Keys, Message, Push, Section, Sections, decode, decode_split,
};
use proptest::prelude::*;

proptest! {
    #[test]
    fn a_push_split_before_its_last_values_decodes_as_the_whole(
        rows in prop::collection::vec((0u32..4, prop::collection::vec(any::<u64>(), 1..4), 1usize..40), 1..4),
        tick in any::<bool>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let keys: Vec<Vec<u64>> = rows.iter().map(|(_, k, _)| k.clone()).collect();
        let values: Vec<Vec<u8>> = rows
            .iter()
            .enumerate()
            .map(|(i, (_, k, len))| (0..k.len() * len).map(|b| (b + i) as u8).collect())
            .collect();
        let sections: Vec<Section<'_>> = rows
            .iter()
            .zip(&keys)
            .zip(&values)
            .map(|(((table, _, _), keys), values)| Section {
                table: *table,
                keys: Keys::Native(keys),
                values,
            })
            .collect();
        let msg = Message::Push(Push { worker: 3, seq: 9, clock: 2, tick, sections: Sections::Native(&sections) });
        let whole = msg.to_vec();
        let parts = msg.encode_parts();
        let last = &values[values.len() - 1][..];
        // The tail: the last values and their zero padding.
        let (head, tail) = whole.split_at(whole.len() - last.len().next_multiple_of(8));
        prop_assert_eq!(&tail[..last.len()], last);
        // `split_values` gives that head and those values for a push of
        // one section, which is what a stashed row is sent as.
        match parts.split_values() {
            Some((h, v)) => {
                prop_assert_eq!(sections.len(), 1);
                prop_assert_eq!((h, v), (head, last));
            }
            None => prop_assert!(sections.len() > 1),
        }
        let split = decode_split(head, tail, DEFAULT_MAX_PAYLOAD).unwrap();
        prop_assert_eq!(split.to_vec(), whole.clone());
        let Message::Push(p) = split else { panic!("not a push") };
        let got: Vec<&[u8]> = p.sections.iter().map(|s| s.values).collect();
        let want: Vec<&[u8]> = values.iter().map(|v| &v[..]).collect();
        prop_assert_eq!(got, want);
        // Anywhere else, the split cuts the header or a field (an error)
        // or falls between fields and gives the same message.
        let at = cut.index(whole.len() + 1);
        match decode_split(&whole[..at], &whole[at..], DEFAULT_MAX_PAYLOAD) {
            Ok(m) => prop_assert_eq!(m.to_vec(), whole.clone()),
            Err(_) => prop_assert!(at != head.len() && at != whole.len(), "split at {}", at),
        }
        prop_assert!(decode(&whole, DEFAULT_MAX_PAYLOAD).is_ok());
    }
}

#[test]
fn only_a_push_may_have_a_tail() {
    let ack = Message::PushAck(laggard::proto::PushAck {
        seq: 1,
        min_clock: 0,
    })
    .to_vec();
    let (head, tail) = ack.split_at(ack.len() - 8);
    let err = decode_split(head, tail, DEFAULT_MAX_PAYLOAD).unwrap_err();
    assert!(err.to_string().contains("only a push"), "{err}");
    // A tail the header does not count is a length mismatch.
    assert!(decode_split(&ack, &[0; 8], DEFAULT_MAX_PAYLOAD).is_err());
}
