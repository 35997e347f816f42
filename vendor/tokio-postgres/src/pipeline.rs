//! GATEHOUSE PATCH (vendor/README.md, 12): several statements in one pipeline ending in a
//! single Sync.

use crate::client::InnerClient;
use crate::codec::FrontendMessage;
use crate::connection::RequestMessages;
use crate::query::{columns_of, encode_bind, encode_bind_raw};
use crate::types::{ToSql, Type};
use crate::{Error, Row, Statement};
use bytes::BytesMut;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use std::sync::Arc;

/// One statement of [`Client::query_pipeline`](crate::Client::query_pipeline).
#[derive(Clone, Copy)]
pub enum PipelineQuery<'a> {
    /// A prepared statement and its parameters.
    Prepared(&'a Statement, &'a [&'a (dyn ToSql + Sync)]),
    /// An unnamed statement sent with its parameter types, as
    /// [`Client::query_typed`](crate::Client::query_typed) sends it (nothing outlives the
    /// pipeline, as transaction-mode connection poolers require).
    Typed(&'a str, &'a [(&'a (dyn ToSql + Sync), Type)]),
}

pub async fn query_pipeline(
    client: &Arc<InnerClient>,
    queries: &[PipelineQuery<'_>],
) -> Result<Vec<Vec<Row>>, Error> {
    // Encoded in a buffer of its own: a parameter that fails to encode leaves nothing behind
    // and nothing is sent.
    let mut buf = BytesMut::new();
    for query in queries {
        match *query {
            PipelineQuery::Prepared(statement, params) => {
                encode_bind(statement, params.iter().copied(), "", &mut buf)?;
            }
            PipelineQuery::Typed(sql, params) => {
                let oids = params.iter().map(|(_, t)| t.oid()).collect::<Vec<_>>();
                frontend::parse("", sql, oids, &mut buf).map_err(Error::parse)?;
                encode_bind_raw(
                    "",
                    params.iter().map(|(p, t)| (*p, t.clone())),
                    "",
                    &mut buf,
                )?;
                frontend::describe(b'S', "", &mut buf).map_err(Error::encode)?;
            }
        }
        frontend::execute("", 0, &mut buf).map_err(Error::encode)?;
    }
    frontend::sync(&mut buf);
    let mut responses = client.send(RequestMessages::Single(FrontendMessage::Raw(buf.freeze())))?;

    let mut results = Vec::with_capacity(queries.len());
    for query in queries {
        let mut statement = match query {
            PipelineQuery::Prepared(statement, _) => Some((*statement).clone()),
            PipelineQuery::Typed(..) => None,
        };
        let mut rows = Vec::new();
        loop {
            match responses.next().await? {
                Message::ParseComplete
                | Message::BindComplete
                | Message::ParameterDescription(_) => {}
                Message::NoData if statement.is_none() => {
                    statement = Some(Statement::unnamed(vec![], vec![]));
                }
                Message::RowDescription(body) if statement.is_none() => {
                    let columns = columns_of(client, &body).await?;
                    statement = Some(Statement::unnamed(vec![], columns));
                }
                Message::DataRow(body) => match &statement {
                    Some(statement) => rows.push(Row::new(statement.clone(), body)?),
                    None => return Err(Error::unexpected_message()),
                },
                Message::CommandComplete(_) | Message::EmptyQueryResponse => break,
                _ => return Err(Error::unexpected_message()),
            }
        }
        results.push(rows);
    }
    // The Sync's answer: only now has the implicit transaction committed.
    match responses.next().await? {
        Message::ReadyForQuery(_) => Ok(results),
        _ => Err(Error::unexpected_message()),
    }
}
