//! Bounds shared by the native file readers (`files`) and the code both targets run (`bundle`'s manifest
//! checks in the page too); a module of its own so that neither imports the other for them.

/// The most a text file (a config, manifest, dataset list or training config: kilobytes in practice) or a
/// tokenizer / picture file may hold: 64 MiB. A larger one is refused from its size, before it is read
/// (`files`, natively), and a bundle's manifest may not declare a larger tokenizer (the page too).
pub const MAX_SMALL_FILE: u64 = 64 << 20;
