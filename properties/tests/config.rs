//! Configuration values survive printing and parsing: what `surge config`
//! prints can be pasted back into an `.env` file unchanged.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use surge_core::config::{
    Config, Origin, Source, format_bytes, format_duration, parse_bytes, parse_duration,
};

proptest! {
    #![proptest_config(surge_properties::config("config", 256))]

    #[test]
    fn durations_round_trip_at_millisecond_precision(ms in 0u64..400_000_000_000) {
        let d = Duration::from_millis(ms);
        prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
    }

    #[test]
    fn byte_sizes_round_trip(bytes in any::<u64>()) {
        prop_assert_eq!(parse_bytes(&format_bytes(bytes)), Ok(bytes));
    }

    #[test]
    fn backlog_in_range_is_accepted_and_out_of_range_named(backlog in 0u64..200_000) {
        let mut values = BTreeMap::new();
        values.insert("SURGE_BACKLOG".to_string(), backlog.to_string());
        let result = Config::from_sources(&[Source { origin: Origin::Env, values }]);
        if (1..=65_535).contains(&backlog) {
            prop_assert_eq!(result.map(|c| u64::from(c.backlog)).ok(), Some(backlog));
        } else {
            let errors = result.expect_err("out of range");
            let text = errors.to_string();
            prop_assert!(text.contains("SURGE_BACKLOG"), "{}", text);
        }
    }
}
