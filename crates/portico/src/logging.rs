//! Log lines as Interlock prints them (logrus' logfmt):
//! `time="2019-06-10T18:44:22Z" level=info msg="update detected" currentVersion=3edc6f`,
//! or the same fields as one JSON object per line.

use std::fmt;
use std::time::SystemTime;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Logfmt,
    Json,
}

/// Installs the global subscriber, writing to stderr. `PORTICO_LOG` (an
/// `EnvFilter` directive such as `debug` or `portico_proxy=debug`) overrides
/// the default level, info.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_env("PORTICO_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .event_format(Formatter(format))
        .try_init();
}

struct Formatter(LogFormat);

/// A field value kept with its JSON type.
enum Value {
    Str(String),
    Num(serde_json::Number),
    Bool(bool),
}

#[derive(Default)]
struct Fields {
    msg: String,
    rest: Vec<(&'static str, Value)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.msg = value.to_owned();
        } else {
            self.rest.push((field.name(), Value::Str(value.to_owned())));
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.msg = text;
        } else {
            self.rest.push((field.name(), Value::Str(text)));
        }
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.rest.push((field.name(), Value::Num(value.into())));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.rest.push((field.name(), Value::Num(value.into())));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.rest.push((field.name(), Value::Bool(value)));
    }
}

impl<S, N> FormatEvent<S, N> for Formatter
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        // An access line in nginx's combined format is written as it is
        // (escaped where it was made): tools that parse it expect nothing else.
        if event.metadata().target() == portico_proxy::access_log::TARGET
            && fields.msg == portico_proxy::access_log::COMBINED
        {
            if let Some((_, Value::Str(line))) = fields.rest.iter().find(|(k, _)| *k == "line") {
                return writeln!(w, "{line}");
            }
        }
        let time = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let level = event.metadata().level().as_str().to_ascii_lowercase();
        match self.0 {
            LogFormat::Logfmt => {
                write!(w, "time=\"{time}\" level={level} msg=")?;
                quote(&mut w, &fields.msg)?;
                for (k, v) in &fields.rest {
                    write!(w, " {k}=")?;
                    match v {
                        Value::Str(s) if needs_quotes(s) => quote(&mut w, s)?,
                        Value::Str(s) => w.write_str(s)?,
                        Value::Num(n) => write!(w, "{n}")?,
                        Value::Bool(b) => write!(w, "{b}")?,
                    }
                }
                writeln!(w)
            }
            LogFormat::Json => {
                let mut obj = serde_json::Map::new();
                obj.insert("time".into(), time.into());
                obj.insert("level".into(), level.into());
                obj.insert("msg".into(), fields.msg.into());
                for (k, v) in fields.rest {
                    let v = match v {
                        Value::Str(s) => serde_json::Value::String(s),
                        Value::Num(n) => serde_json::Value::Number(n),
                        Value::Bool(b) => serde_json::Value::Bool(b),
                    };
                    obj.insert(k.to_owned(), v);
                }
                writeln!(w, "{}", serde_json::Value::Object(obj))
            }
        }
    }
}

/// logrus quotes a value only when it has to; an empty value stays bare
/// (`currentVersion= updatedVersion=3edc6f`).
fn needs_quotes(s: &str) -> bool {
    s.bytes()
        .any(|b| b <= b' ' || b == b'"' || b == b'=' || b == b'\\' || b >= 0x7f)
}

fn quote(w: &mut Writer<'_>, s: &str) -> fmt::Result {
    w.write_char('"')?;
    for c in s.chars() {
        match c {
            '"' => w.write_str("\\\"")?,
            '\\' => w.write_str("\\\\")?,
            '\n' => w.write_str("\\n")?,
            '\t' => w.write_str("\\t")?,
            c if c.is_control() => write!(w, "\\u{{{:x}}}", c as u32)?,
            c => w.write_char(c)?,
        }
    }
    w.write_char('"')
}
