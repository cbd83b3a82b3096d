use std::io::Read;

use super::*;

/// What a client that does not know our framing reads: a raw inflate of
/// the payload with the sync tail put back (flate2's reader, not ours).
fn client_inflate(payload: &[u8]) -> Vec<u8> {
    let mut stream = payload.to_vec();
    stream.extend_from_slice(&SYNC_TAIL);
    let mut out = Vec::new();
    let mut reader = flate2::read::DeflateDecoder::new(&stream[..]);
    // The stream has no final block: the reader reports the end of its
    // input as an error after producing everything.
    let _ = reader.read_to_end(&mut out);
    out
}

#[test]
fn browsers_offer_is_accepted_without_context_takeover_either_way() {
    let (deflate, response) =
        negotiate(["permessage-deflate; client_max_window_bits"]).expect("accepted");
    assert_eq!(deflate, Deflate::full());
    assert_eq!(
        response,
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    );
}

#[test]
fn the_first_acceptable_offer_wins_and_bad_ones_are_declined() {
    let cases: &[(&[&str], Option<u8>)] = &[
        (&["x-webkit-deflate-frame"], None),
        (&["permessage-deflate; unknown_param"], None),
        (
            &["permessage-deflate; server_no_context_takeover; server_no_context_takeover"],
            None,
        ),
        (&["permessage-deflate; server_max_window_bits"], None),
        (&["permessage-deflate; server_max_window_bits=16"], None),
        (&["permessage-deflate; server_max_window_bits=0x9"], None),
        (&["permessage-deflate; client_max_window_bits=7"], None),
        (&["permessage-deflate; server_max_window_bits=10"], Some(10)),
        (
            &["permessage-deflate; server_max_window_bits=\"12\""],
            Some(12),
        ),
        // zlib has no 256-byte window: that offer is declined, the next taken.
        (
            &["permessage-deflate; server_max_window_bits=8, permessage-deflate"],
            Some(15),
        ),
        (
            &["foo, PerMessage-Deflate; Client_Max_Window_Bits=9"],
            Some(15),
        ),
        (&["foo", "permessage-deflate"], Some(15)),
    ];
    for (values, expected) in cases {
        let got = negotiate(values.iter().copied());
        assert_eq!(
            got.as_ref().map(|(d, _)| d.window_bits()),
            *expected,
            "{values:?}"
        );
        if let Some((d, response)) = got
            && d.window_bits() < MAX_WINDOW_BITS
        {
            assert!(
                response.ends_with(&format!("; server_max_window_bits={}", d.window_bits())),
                "{response}"
            );
        }
    }
}

#[test]
fn a_stored_head_and_a_compressed_tail_read_as_one_message() {
    let head = br#"{"type":"message","seq":12345"#;
    let tail = br#","subject":"odin.token.BTC.trade","sseq":99,"data":{"price":"64123.50","qty":"0.015","side":"buy","price2":"64123.50"}}"#;
    for bits in [15, 12, 9] {
        let deflate = Deflate {
            window_bits: NonZeroU8::new(bits).expect("bits"),
        };
        let compressed_tail = compress(tail, deflate);
        assert!(!compressed_tail.ends_with(&SYNC_TAIL));
        let mut payload = Vec::new();
        stored_blocks_into(&mut payload, head);
        payload.extend_from_slice(&compressed_tail);
        let expected = [&head[..], &tail[..]].concat();
        assert_eq!(client_inflate(&payload), expected, "window {bits}");
        assert_eq!(inflate(&payload, 4096).expect("inflates"), expected);
    }
}

#[test]
fn compression_pays_on_repetitive_json_and_big_stored_heads_split() {
    let tail = r#","data":{"bids":[["64123.50","0.015"],["64123.00","0.020"],["64122.50","0.010"]],"asks":[["64124.00","0.015"],["64124.50","0.020"],["64125.00","0.010"]]}}"#;
    let compressed = compress(tail.as_bytes(), Deflate::full());
    assert!(
        compressed.len() * 10 < tail.len() * 7,
        "{} of {} bytes",
        compressed.len(),
        tail.len()
    );
    let big = vec![b'x'; 70_000];
    let mut stored = Vec::new();
    stored_blocks_into(&mut stored, &big);
    assert_eq!(stored.len(), big.len() + 2 * 5, "two blocks");
    assert_eq!(client_inflate(&stored), big);
}

#[test]
fn inflate_stops_a_bomb_at_the_limit() {
    let zeros = vec![0u8; 1 << 20];
    let bomb = compress(&zeros, Deflate::full());
    assert!(bomb.len() < 2048, "{}", bomb.len());
    assert_eq!(
        inflate(&bomb, 16 * 1024),
        Err(InflateError::TooBig { limit: 16 * 1024 })
    );
    assert_eq!(
        inflate(&bomb, 1 << 20).expect("at the limit").len(),
        1 << 20
    );
    assert_eq!(inflate(b"\xff\xff\xff", 100), Err(InflateError::Corrupt));
}

#[test]
fn an_empty_message_compresses_to_what_rfc_7692_shows() {
    // RFC 7692 §7.2.3.6: an empty message is the single byte 0x00 once
    // the sync tail is removed; a final empty block (0x02 0x00) is another
    // valid spelling a client may send.
    assert_eq!(compress(b"", Deflate::full()), [0x00]);
    assert_eq!(inflate(&[0x02, 0x00], 10).expect("empty"), b"");
    assert_eq!(inflate(&[0x00], 10).expect("empty"), b"");
}
