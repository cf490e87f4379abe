//! Kafka's topic ids (UUIDs a recreated topic does not share) and the cluster id: what ties
//! an owned topic to the very topic this resource created. rust-rdkafka has no DescribeTopics,
//! so this calls librdkafka's (2.x) through its bindings, with every handle freed on every path.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString, c_char};
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::client::{Client, ClientContext};

/// A librdkafka handle freed by its destroy function when dropped.
struct Handle<T>(*mut T, unsafe extern "C" fn(*mut T));

impl<T> Drop for Handle<T> {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the pointer came from the matching librdkafka constructor and is
            // destroyed exactly once, here.
            unsafe { (self.1)(self.0) }
        }
    }
}

/// The text of a C string librdkafka returned (owned by the object it came from).
///
/// # Safety
/// `p` is null or a NUL-terminated string alive for this call.
unsafe fn text(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: per this function's contract.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// The id of each of `names` that exists (base64, as Kafka's own tools print it); a topic that
/// does not exist is left out. Blocks for up to `timeout`: call it on a blocking thread.
pub fn topic_ids<C: ClientContext>(
    client: &Client<C>,
    names: &[String],
    timeout: Duration,
) -> Result<BTreeMap<String, String>, String> {
    let names: Vec<CString> = names
        .iter()
        .map(|n| CString::new(n.as_str()).map_err(|_| format!("topic name {n:?} holds a NUL")))
        .collect::<Result<_, _>>()?;
    let mut pointers: Vec<*const c_char> = names.iter().map(|n| n.as_ptr()).collect();
    let rk = client.native_ptr();
    let timeout_ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    let mut ids = BTreeMap::new();
    // SAFETY: every handle is created from `rk`, which `client` keeps alive for this call, and
    // freed by its Handle (the event before the queue, then the options and the collection, as
    // they drop in reverse order); the descriptions and strings read belong to the event and
    // are copied before it is freed.
    unsafe {
        let collection = Handle(
            rd::rd_kafka_TopicCollection_of_topic_names(pointers.as_mut_ptr(), pointers.len()),
            rd::rd_kafka_TopicCollection_destroy,
        );
        let options = Handle(
            rd::rd_kafka_AdminOptions_new(
                rk,
                rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBETOPICS,
            ),
            rd::rd_kafka_AdminOptions_destroy,
        );
        let mut errstr = [0 as c_char; 256];
        rd::rd_kafka_AdminOptions_set_request_timeout(
            options.0,
            timeout_ms,
            errstr.as_mut_ptr(),
            errstr.len(),
        );
        let queue = Handle(rd::rd_kafka_queue_new(rk), rd::rd_kafka_queue_destroy);
        rd::rd_kafka_DescribeTopics(rk, collection.0, options.0, queue.0);
        let event = Handle(
            rd::rd_kafka_queue_poll(queue.0, timeout_ms.saturating_add(1000)),
            rd::rd_kafka_event_destroy,
        );
        if event.0.is_null() {
            return Err(format!(
                "no answer to DescribeTopics within {} s",
                timeout.as_secs()
            ));
        }
        if rd::rd_kafka_event_error(event.0) != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
        {
            return Err(format!(
                "DescribeTopics: {}",
                text(rd::rd_kafka_event_error_string(event.0))
            ));
        }
        let result = rd::rd_kafka_event_DescribeTopics_result(event.0);
        if result.is_null() {
            return Err("DescribeTopics: an answer of another kind".into());
        }
        let mut count = 0usize;
        let topics = rd::rd_kafka_DescribeTopics_result_topics(result, &mut count);
        for i in 0..count {
            let topic = *topics.add(i);
            let name = text(rd::rd_kafka_TopicDescription_name(topic));
            let error = rd::rd_kafka_TopicDescription_error(topic);
            if !error.is_null() {
                match rd::rd_kafka_error_code(error) {
                    rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR => {}
                    rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART => continue,
                    _ => {
                        return Err(format!(
                            "describing topic {name}: {}",
                            text(rd::rd_kafka_error_string(error))
                        ));
                    }
                }
            }
            let id = rd::rd_kafka_TopicDescription_topic_id(topic);
            if id.is_null() {
                return Err(format!(
                    "topic {name} has no id (a broker before Kafka 2.8?)"
                ));
            }
            ids.insert(name, text(rd::rd_kafka_Uuid_base64str(id)));
        }
    }
    Ok(ids)
}

/// The id of the Kafka cluster the client reaches.
pub fn cluster_id<C: ClientContext>(
    client: &Client<C>,
    timeout: Duration,
) -> Result<String, String> {
    client
        .fetch_cluster_id(timeout)
        .filter(|id| !id.is_empty())
        .ok_or_else(|| {
            format!(
                "the cluster did not say its id within {} s",
                timeout.as_secs()
            )
        })
}
