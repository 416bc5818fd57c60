//! `google.protobuf.Timestamp` with the proto3 JSON mapping done right: RFC 3339 in UTC with a
//! `Z` suffix and 0, 3, 6 or 9 fraction digits on output; any offset accepted on input.

use chrono::{DateTime, SecondsFormat, Utc};

/// A point in time, as seconds and nanoseconds since the Unix epoch.
#[derive(Clone, Copy, PartialEq, Eq, Hash, ::prost::Message)]
pub struct Timestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

impl From<DateTime<Utc>> for Timestamp {
    fn from(t: DateTime<Utc>) -> Timestamp {
        Timestamp {
            seconds: t.timestamp(),
            nanos: t.timestamp_subsec_nanos() as i32,
        }
    }
}

impl TryFrom<Timestamp> for DateTime<Utc> {
    type Error = &'static str;
    fn try_from(t: Timestamp) -> Result<DateTime<Utc>, &'static str> {
        let nanos = u32::try_from(t.nanos).map_err(|_| "negative nanos")?;
        DateTime::from_timestamp(t.seconds, nanos).ok_or("timestamp out of range")
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let t: DateTime<Utc> = (*self).try_into().map_err(serde::ser::Error::custom)?;
        let format = match self.nanos {
            0 => SecondsFormat::Secs,
            n if n % 1_000_000 == 0 => SecondsFormat::Millis,
            n if n % 1_000 == 0 => SecondsFormat::Micros,
            _ => SecondsFormat::Nanos,
        };
        s.serialize_str(&t.to_rfc3339_opts(format, true))
    }
}

impl<'de> serde::Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let s = String::deserialize(d)?;
        let t = DateTime::parse_from_rfc3339(&s).map_err(|e| {
            serde::de::Error::custom(format!("'{s}' is not an RFC 3339 timestamp: {e}"))
        })?;
        Ok(t.with_timezone(&Utc).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(seconds: i64, nanos: i32) -> String {
        serde_json::to_string(&Timestamp { seconds, nanos }).unwrap()
    }

    #[test]
    fn prints_utc_with_z_and_minimal_fraction() {
        assert_eq!(json(0, 0), "\"1970-01-01T00:00:00Z\"");
        assert_eq!(json(1, 500_000_000), "\"1970-01-01T00:00:01.500Z\"");
        assert_eq!(json(1, 1_000), "\"1970-01-01T00:00:01.000001Z\"");
        assert_eq!(json(1, 1), "\"1970-01-01T00:00:01.000000001Z\"");
        let t: Timestamp = serde_json::from_str("\"1970-01-01T02:00:01+02:00\"").unwrap();
        assert_eq!(
            t,
            Timestamp {
                seconds: 1,
                nanos: 0
            }
        );
    }
}
