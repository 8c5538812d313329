//! Sync rules, as in Entra Connect's declarative provisioning: direction, connector, object
//! types, link type, precedence, scoping filter groups, join groups and attribute flows.
//!
//! Rules live in TOML files versioned with the deployment ([`file`]); [`RuleSet::parse`] turns
//! them into a checked [`RuleSet`] (expressions checked, names and operators validated), and
//! [`defaults`] generates the out-of-box rule set. [`scope`] evaluates scoping filters.
//!
//! Pure: no I/O (callers read the files), no knowledge of stores, connectors or the engine's
//! decisions.

pub mod defaults;
pub mod file;
pub mod scope;

use model::ConnectorId;
use sync_expr::CheckedExpr;

pub use file::RuleError;

/// Whether a rule maps connector space → metaverse or metaverse → connector space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// CS → MV.
    Inbound,
    /// MV → CS.
    Outbound,
}

/// What a rule may do when no join group finds exactly one match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkType {
    /// Join only; unmatched objects stay disconnectors.
    Join,
    /// Join, or create (project inbound / provision outbound) when nothing matches.
    Provision,
    /// Join only, but keeps the MV object alive while the rule is in scope.
    StickyJoin,
}

/// A scoping-filter operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs, reason = "the names are the operators of the Entra rule editor")]
pub enum Operator {
    Equal,
    NotEqual,
    LessThan,
    LessThanOrEqual,
    GreaterThan,
    GreaterThanOrEqual,
    Contains,
    NotContains,
    StartsWith,
    NotStartsWith,
    EndsWith,
    NotEndsWith,
    IsNull,
    IsNotNull,
    IsIn,
    IsNotIn,
    IsBitSet,
    IsNotBitSet,
    IsMemberOf,
    IsNotMemberOf,
}

impl Operator {
    /// Every operator with its spelling in rule files (`ISBITNOTSET` is accepted too).
    pub const ALL: &'static [(&'static str, Operator)] = &[
        ("EQUAL", Operator::Equal),
        ("NOTEQUAL", Operator::NotEqual),
        ("LESSTHAN", Operator::LessThan),
        ("LESSTHAN_OR_EQUAL", Operator::LessThanOrEqual),
        ("GREATERTHAN", Operator::GreaterThan),
        ("GREATERTHAN_OR_EQUAL", Operator::GreaterThanOrEqual),
        ("CONTAINS", Operator::Contains),
        ("NOTCONTAINS", Operator::NotContains),
        ("STARTSWITH", Operator::StartsWith),
        ("NOTSTARTSWITH", Operator::NotStartsWith),
        ("ENDSWITH", Operator::EndsWith),
        ("NOTENDSWITH", Operator::NotEndsWith),
        ("ISNULL", Operator::IsNull),
        ("ISNOTNULL", Operator::IsNotNull),
        ("ISIN", Operator::IsIn),
        ("ISNOTIN", Operator::IsNotIn),
        ("ISBITSET", Operator::IsBitSet),
        ("ISNOTBITSET", Operator::IsNotBitSet),
        ("ISMEMBEROF", Operator::IsMemberOf),
        ("ISNOTMEMBEROF", Operator::IsNotMemberOf),
    ];

    /// Parses a spelling, case-insensitively.
    pub fn parse(text: &str) -> Option<Operator> {
        let upper = text.trim().to_ascii_uppercase();
        if upper == "ISBITNOTSET" {
            return Some(Operator::IsNotBitSet);
        }
        Operator::ALL.iter().find(|(name, _)| *name == upper).map(|(_, operator)| *operator)
    }

    /// Whether the operator compares with a value (all but ISNULL/ISNOTNULL).
    pub fn takes_value(self) -> bool {
        !matches!(self, Operator::IsNull | Operator::IsNotNull)
    }
}

/// One clause of a scoping filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// The attribute tested (on the CS object inbound, the MV object outbound).
    pub attribute: String,
    /// The test.
    pub operator: Operator,
    /// The value compared with (empty for ISNULL/ISNOTNULL).
    pub value: String,
}

/// One clause of a join group: the source attribute must equal the target attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinCondition {
    /// Attribute on the source side (CS inbound, MV outbound).
    pub source: String,
    /// Attribute on the target side (MV inbound, CS outbound).
    pub target: String,
    /// Compare case-sensitively (binary values always compare exactly).
    pub case_sensitive: bool,
}

/// Where a flow's value comes from.
#[derive(Debug, Clone)]
pub enum FlowSource {
    /// Copy one source attribute as-is.
    Direct(String),
    /// A literal (`True`, `False` and whole numbers become boolean and integer values).
    Constant(String),
    /// An expression.
    Expression(CheckedExpr),
}

/// How values from several contributing rules combine on a multi-valued target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeType {
    /// The highest-precedence contributor wins (the default).
    Update,
    /// Union of all contributors, exact duplicates removed.
    Merge,
    /// Union, duplicates removed ignoring case.
    MergeCaseInsensitive,
    /// Same as `Update`.
    Replace,
}

/// One attribute flow.
#[derive(Debug, Clone)]
pub struct Flow {
    /// The target attribute.
    pub target: String,
    /// The value's source.
    pub source: FlowSource,
    /// Set only when the target object is created.
    pub apply_once: bool,
    /// How contributions combine.
    pub merge: MergeType,
}

/// A checked sync rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Unique name.
    pub name: String,
    /// Inbound or outbound.
    pub direction: Direction,
    /// The connector on the CS side.
    pub connector: ConnectorId,
    /// Source object type (CS type inbound, MV type outbound).
    pub source_type: String,
    /// Target object type (MV type inbound, CS type outbound).
    pub target_type: String,
    /// Join, provision or sticky join.
    pub link_type: LinkType,
    /// Lower wins; unique per direction.
    pub precedence: i32,
    /// Whether objects in scope of this rule get password hash sync.
    pub password_sync: bool,
    /// Groups of clauses: AND inside a group, OR across groups; empty = every object.
    pub scope: Vec<Vec<Condition>>,
    /// Join groups, tried in order; empty = this rule does not join.
    pub join: Vec<Vec<JoinCondition>>,
    /// Attribute flows.
    pub flows: Vec<Flow>,
}

/// A checked set of rules, ordered by direction and precedence. Only [`RuleSet::parse`] and
/// [`defaults`] make one.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    rules: Vec<Rule>,
}

impl RuleSet {
    /// All rules, inbound first, each direction by precedence.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Every attribute a join looks objects up by (the targets of the join conditions: MV
    /// attributes for inbound rules, connector-space attributes for outbound ones): what a
    /// store's lookup index must hold.
    pub fn join_targets(&self) -> std::collections::BTreeSet<String> {
        self.rules().iter().flat_map(|rule| rule.join.iter().flatten()).map(|condition| condition.target.clone()).collect()
    }

    /// The rules for `direction` and `connector`, by precedence.
    pub fn for_connector<'a>(&'a self, direction: Direction, connector: &'a ConnectorId) -> impl Iterator<Item = &'a Rule> + 'a {
        self.rules.iter().filter(move |rule| rule.direction == direction && &rule.connector == connector)
    }

    /// A rule by name.
    pub fn get(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|rule| rule.name == name)
    }

    /// Joins several checked sets (e.g. the defaults and a site's own rules) and checks the result.
    pub fn combine(sets: Vec<RuleSet>) -> Result<RuleSet, Vec<RuleError>> {
        file::finish(sets.into_iter().flat_map(|set| set.rules).collect())
    }
}
