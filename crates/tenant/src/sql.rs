//! The little the directory's storage needs of a SQL database, so one set of queries (`db.rs`)
//! runs on SQLite (embedded, one process) and on PostgreSQL (several tenant processes sharing one
//! database).
//!
//! Queries are written once with `?1`, `?2` … placeholders (PostgreSQL gets `$1`, `$2` …); the
//! few places where the two dialects differ (case-insensitive comparison, JSON paths) ask
//! [`Sql::dialect`]. Every [`crate::db::Db::call`] runs in one transaction: committed when the
//! work returns `Ok`, rolled back otherwise, so a failed request leaves nothing half-written.

use crate::db::DbError;

/// Which SQL the database speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite (rusqlite, bundled).
    Sqlite,
    /// PostgreSQL (tokio-postgres).
    Postgres,
}

/// A parameter or a column value.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    /// NULL.
    Null,
    /// An integer (booleans are 0 and 1).
    Int(i64),
    /// Text.
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
}

impl From<i64> for SqlValue {
    fn from(value: i64) -> Self {
        SqlValue::Int(value)
    }
}
impl From<u32> for SqlValue {
    fn from(value: u32) -> Self {
        SqlValue::Int(i64::from(value))
    }
}
impl From<bool> for SqlValue {
    fn from(value: bool) -> Self {
        SqlValue::Int(i64::from(value))
    }
}
impl From<&str> for SqlValue {
    fn from(value: &str) -> Self {
        SqlValue::Text(value.to_string())
    }
}
impl From<String> for SqlValue {
    fn from(value: String) -> Self {
        SqlValue::Text(value)
    }
}
impl From<&String> for SqlValue {
    fn from(value: &String) -> Self {
        SqlValue::Text(value.clone())
    }
}
impl From<Option<String>> for SqlValue {
    fn from(value: Option<String>) -> Self {
        value.map_or(SqlValue::Null, SqlValue::Text)
    }
}
impl From<&[u8]> for SqlValue {
    fn from(value: &[u8]) -> Self {
        SqlValue::Blob(value.to_vec())
    }
}
impl From<&Vec<u8>> for SqlValue {
    fn from(value: &Vec<u8>) -> Self {
        SqlValue::Blob(value.clone())
    }
}

/// One result row.
#[derive(Debug, Clone)]
pub struct Row(pub Vec<SqlValue>);

impl Row {
    fn at(&self, index: usize) -> Result<&SqlValue, DbError> {
        self.0.get(index).ok_or_else(|| DbError::Corrupt(format!("result column {index} missing")))
    }

    /// A text column.
    pub fn text(&self, index: usize) -> Result<String, DbError> {
        match self.at(index)? {
            SqlValue::Text(text) => Ok(text.clone()),
            other => Err(DbError::Corrupt(format!("column {index} is {other:?}, not text"))),
        }
    }

    /// A text column that may be NULL.
    pub fn opt_text(&self, index: usize) -> Result<Option<String>, DbError> {
        match self.at(index)? {
            SqlValue::Null => Ok(None),
            _ => self.text(index).map(Some),
        }
    }

    /// An integer column.
    pub fn int(&self, index: usize) -> Result<i64, DbError> {
        match self.at(index)? {
            SqlValue::Int(value) => Ok(*value),
            other => Err(DbError::Corrupt(format!("column {index} is {other:?}, not an integer"))),
        }
    }

    /// An integer column that may be NULL.
    pub fn opt_int(&self, index: usize) -> Result<Option<i64>, DbError> {
        match self.at(index)? {
            SqlValue::Null => Ok(None),
            _ => self.int(index).map(Some),
        }
    }

    /// A 0/1 column.
    pub fn bool(&self, index: usize) -> Result<bool, DbError> {
        self.int(index).map(|value| value != 0)
    }

    /// A bytes column.
    pub fn blob(&self, index: usize) -> Result<Vec<u8>, DbError> {
        match self.at(index)? {
            SqlValue::Blob(bytes) => Ok(bytes.clone()),
            other => Err(DbError::Corrupt(format!("column {index} is {other:?}, not bytes"))),
        }
    }
}

/// A database inside one transaction.
pub trait Sql {
    /// The dialect, for the few queries that differ.
    fn dialect(&self) -> Dialect;
    /// Runs a statement; returns the rows it changed.
    fn execute(&mut self, sql: &str, params: &[SqlValue]) -> Result<u64, DbError>;
    /// Runs a query; returns every row.
    fn query(&mut self, sql: &str, params: &[SqlValue]) -> Result<Vec<Row>, DbError>;
    /// Runs several statements (no parameters, no results).
    fn batch(&mut self, sql: &str) -> Result<(), DbError>;
    /// Runs a query; returns its first row.
    fn query_opt(&mut self, sql: &str, params: &[SqlValue]) -> Result<Option<Row>, DbError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }
}

/// SQLite inside a transaction.
pub struct SqliteTx<'a>(pub &'a rusqlite::Transaction<'a>);

impl rusqlite::ToSql for SqlValue {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            SqlValue::Null => ValueRef::Null,
            SqlValue::Int(value) => ValueRef::Integer(*value),
            SqlValue::Text(text) => ValueRef::Text(text.as_bytes()),
            SqlValue::Blob(bytes) => ValueRef::Blob(bytes),
        }))
    }
}

fn sqlite_error(err: rusqlite::Error) -> DbError {
    if let rusqlite::Error::SqliteFailure(failure, message) = &err
        && matches!(failure.extended_code, rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
    {
        return DbError::Unique(message.clone().unwrap_or_default());
    }
    DbError::Sqlite(err)
}

impl Sql for SqliteTx<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn batch(&mut self, sql: &str) -> Result<(), DbError> {
        self.0.execute_batch(sql).map_err(sqlite_error)
    }

    fn execute(&mut self, sql: &str, params: &[SqlValue]) -> Result<u64, DbError> {
        let mut statement = self.0.prepare_cached(sql).map_err(sqlite_error)?;
        Ok(statement.execute(rusqlite::params_from_iter(params.iter())).map_err(sqlite_error)? as u64)
    }

    fn query(&mut self, sql: &str, params: &[SqlValue]) -> Result<Vec<Row>, DbError> {
        use rusqlite::types::ValueRef;
        let mut statement = self.0.prepare_cached(sql).map_err(sqlite_error)?;
        let columns = statement.column_count();
        let mut rows = statement.query(rusqlite::params_from_iter(params.iter())).map_err(sqlite_error)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(sqlite_error)? {
            let mut values = Vec::with_capacity(columns);
            for index in 0..columns {
                values.push(match row.get_ref(index).map_err(sqlite_error)? {
                    ValueRef::Null => SqlValue::Null,
                    ValueRef::Integer(value) => SqlValue::Int(value),
                    ValueRef::Real(value) => SqlValue::Int(value as i64),
                    ValueRef::Text(text) => SqlValue::Text(String::from_utf8_lossy(text).into_owned()),
                    ValueRef::Blob(bytes) => SqlValue::Blob(bytes.to_vec()),
                });
            }
            out.push(Row(values));
        }
        Ok(out)
    }
}

/// One pooled PostgreSQL connection with its prepared statements (each parsed once per
/// connection).
pub struct PgConn {
    pub(crate) client: tokio_postgres::Client,
    statements: std::collections::HashMap<String, tokio_postgres::Statement>,
}

impl PgConn {
    pub(crate) fn new(client: tokio_postgres::Client) -> Self {
        PgConn { client, statements: std::collections::HashMap::new() }
    }
}

/// PostgreSQL inside a transaction, driven from a blocking thread.
pub struct PgTx<'a> {
    pub(crate) conn: &'a mut PgConn,
    pub(crate) runtime: tokio::runtime::Handle,
}

/// `?1` → `$1` (a `?` not followed by a digit is left alone).
pub(crate) fn postgres_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

pub(crate) fn postgres_error(err: tokio_postgres::Error) -> DbError {
    if let Some(db) = err.as_db_error()
        && *db.code() == tokio_postgres::error::SqlState::UNIQUE_VIOLATION
    {
        return DbError::Unique(db.message().to_string());
    }
    DbError::Postgres(err)
}

impl tokio_postgres::types::ToSql for SqlValue {
    fn to_sql(
        &self,
        ty: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use tokio_postgres::types::{IsNull, Type};
        match self {
            SqlValue::Null => Ok(IsNull::Yes),
            SqlValue::Int(value) => match *ty {
                Type::INT4 => i32::try_from(*value)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*value)?.to_sql(ty, out),
                Type::BOOL => (*value != 0).to_sql(ty, out),
                _ => value.to_sql(ty, out),
            },
            SqlValue::Text(text) => text.as_str().to_sql(ty, out),
            SqlValue::Blob(bytes) => bytes.as_slice().to_sql(ty, out),
        }
    }

    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}

impl PgTx<'_> {
    fn statement(&mut self, sql: &str) -> Result<tokio_postgres::Statement, DbError> {
        if let Some(statement) = self.conn.statements.get(sql) {
            return Ok(statement.clone());
        }
        let translated = postgres_placeholders(sql);
        let statement = self.runtime.block_on(self.conn.client.prepare(&translated)).map_err(postgres_error)?;
        self.conn.statements.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }
}

fn params_of(params: &[SqlValue]) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
    params.iter().map(|value| value as &(dyn tokio_postgres::types::ToSql + Sync)).collect()
}

impl Sql for PgTx<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn batch(&mut self, sql: &str) -> Result<(), DbError> {
        self.runtime.block_on(self.conn.client.batch_execute(sql)).map_err(postgres_error)
    }

    fn execute(&mut self, sql: &str, params: &[SqlValue]) -> Result<u64, DbError> {
        let statement = self.statement(sql)?;
        self.runtime.block_on(self.conn.client.execute(&statement, &params_of(params))).map_err(postgres_error)
    }

    fn query(&mut self, sql: &str, params: &[SqlValue]) -> Result<Vec<Row>, DbError> {
        use tokio_postgres::types::Type;
        let statement = self.statement(sql)?;
        let rows = self.runtime.block_on(self.conn.client.query(&statement, &params_of(params))).map_err(postgres_error)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let mut values = Vec::with_capacity(row.len());
            for (index, column) in row.columns().iter().enumerate() {
                let corrupt = |err: tokio_postgres::Error| DbError::Corrupt(format!("column {}: {err}", column.name()));
                let value = match *column.type_() {
                    Type::INT8 => row.try_get::<_, Option<i64>>(index).map_err(corrupt)?.map(SqlValue::Int),
                    Type::INT4 => row.try_get::<_, Option<i32>>(index).map_err(corrupt)?.map(|v| SqlValue::Int(v.into())),
                    Type::INT2 => row.try_get::<_, Option<i16>>(index).map_err(corrupt)?.map(|v| SqlValue::Int(v.into())),
                    Type::BOOL => row.try_get::<_, Option<bool>>(index).map_err(corrupt)?.map(|v| SqlValue::Int(v.into())),
                    Type::BYTEA => row.try_get::<_, Option<Vec<u8>>>(index).map_err(corrupt)?.map(SqlValue::Blob),
                    _ => row.try_get::<_, Option<String>>(index).map_err(corrupt)?.map(SqlValue::Text),
                };
                values.push(value.unwrap_or(SqlValue::Null));
            }
            out.push(Row(values));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_dollar_numbers_and_other_question_marks_stay() {
        assert_eq!(postgres_placeholders("SELECT 1 WHERE a = ?1 AND b = ?12"), "SELECT 1 WHERE a = $1 AND b = $12");
        assert_eq!(postgres_placeholders("SELECT data::jsonb ? 'x', '?' FROM t"), "SELECT data::jsonb ? 'x', '?' FROM t");
    }
}
