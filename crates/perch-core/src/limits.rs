//! Limits of the registry, as named constants with their source (SPEC.md §1.2, §1.6, IoT Core
//! quotas). Exceeding one is an `INVALID_ARGUMENT` (or `RESOURCE_EXHAUSTED` for rates), never a
//! crash.

/// Shortest registry or device id (SPEC.md §1.2: `[a-zA-Z][-a-zA-Z0-9._+~%]{2,254}`).
pub const ID_MIN_CHARS: usize = 3;
/// Longest registry or device id (SPEC.md §1.2).
pub const ID_MAX_CHARS: usize = 255;
/// Credentials one device may hold (IoT Core quota).
pub const DEVICE_CREDENTIALS_MAX: usize = 3;
/// CA certificates one registry may hold (IoT Core quota).
pub const REGISTRY_CREDENTIALS_MAX: usize = 10;
/// Event notification configs per registry (IoT Core quota).
pub const EVENT_NOTIFICATION_CONFIGS_MAX: usize = 10;
/// Config versions kept per device (IoT Core).
pub const CONFIG_VERSIONS_KEPT: usize = 10;
/// Device states kept per device (IoT Core).
pub const STATES_KEPT: usize = 10;
/// Largest device config or state payload (IoT Core: 64 KB).
pub const CONFIG_DATA_MAX_BYTES: usize = 64 * 1024;
/// Largest device state payload (IoT Core: 64 KB).
pub const STATE_DATA_MAX_BYTES: usize = 64 * 1024;
/// Longest metadata key (SPEC.md §1.2: "< 128 bytes" in the proto, 1–128 in the docs; we accept 128).
pub const METADATA_KEY_MAX_BYTES: usize = 128;
/// Largest metadata value (IoT Core: 32 KB).
pub const METADATA_VALUE_MAX_BYTES: usize = 32 * 1024;
/// Largest sum of metadata keys and values (IoT Core: 256 KB).
pub const METADATA_TOTAL_MAX_BYTES: usize = 256 * 1024;
/// Most metadata pairs per device (IoT Core).
pub const METADATA_PAIRS_MAX: usize = 500;
/// Longest `subfolderMatches` in an event notification config (SPEC.md §1.2).
pub const SUBFOLDER_MATCHES_MAX_BYTES: usize = 256;
/// Largest page a list call returns (IoT Core: pageSize ≤ 500 is a clamp, not an error here).
pub const LIST_PAGE_SIZE_MAX: usize = 500;
/// Page size when the caller asks for 0 (unspecified).
pub const LIST_PAGE_SIZE_DEFAULT: usize = 500;
/// Most ids in one `deviceIds` / `deviceNumIds` list filter (IoT Core).
pub const LIST_FILTER_IDS_MAX: usize = 10_000;
/// Devices bound to one gateway (IoT Core quota).
pub const GATEWAY_BOUND_DEVICES_MAX: usize = 10_000;
/// Largest numeric device id we assign: below 2^53 so JavaScript clients keep it exact
/// (SPEC.md §1.2, Perch choice).
pub const NUM_ID_MAX: u64 = (1 << 53) - 1;
/// Smallest numeric device id we assign: 16 decimal digits, like the ids IoT Core handed out.
pub const NUM_ID_MIN: u64 = 1_000_000_000_000_000;
