//! The delivery cursor of one connection: what makes "no event twice, none skipped"
//! hold whatever order the replay and live paths race in.
//!
//! A connection attaches to the hub first, then reads the buffer after the client's
//! `last_seq`: an event appended in between arrives on both paths, and the cursor
//! drops the second copy. A live event beyond the next expected seq means something was
//! missed on the live path (possible across nodes): the connection reads the gap from
//! the store before delivering it.

/// What to do with an event of a given seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Already delivered on this connection: drop it.
    Skip,
    /// The next expected event: deliver it.
    Deliver,
    /// Events between the cursor and this one are missing: read them first.
    Gap {
        /// Read events after this seq.
        after: u64,
    },
}

/// The last seq delivered on this connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    delivered: u64,
}

impl Cursor {
    /// A cursor positioned after `seq`.
    pub fn after(seq: u64) -> Self {
        Self { delivered: seq }
    }

    /// The last delivered seq.
    pub fn delivered(self) -> u64 {
        self.delivered
    }

    /// Decide about an event.
    pub fn step(self, seq: u64) -> Step {
        if seq <= self.delivered {
            Step::Skip
        } else if seq == self.delivered + 1 {
            Step::Deliver
        } else {
            Step::Gap { after: self.delivered }
        }
    }

    /// Record delivery of `seq`.
    pub fn advance(&mut self, seq: u64) {
        if seq > self.delivered {
            self.delivered = seq;
        }
    }
}

/// Where a resume starts: the seq the cursor begins after, and the first seq replayed
/// when the buffer no longer holds every event after `last_seq`.
pub fn resume_point(last_seq: u64, history_first: Option<u64>, session_last: u64) -> (u64, Option<u64>) {
    let start = last_seq.min(session_last);
    let truncated = history_first.filter(|first| *first > start + 1);
    match truncated {
        Some(first) => (first - 1, Some(first)),
        None => (start, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_skips_duplicates_and_reports_gaps() {
        let mut c = Cursor::after(3);
        assert_eq!(c.step(3), Step::Skip);
        assert_eq!(c.step(4), Step::Deliver);
        c.advance(4);
        assert_eq!(c.step(7), Step::Gap { after: 4 });
    }

    #[test]
    fn resume_point_reports_truncation_and_clamps_future_last_seq() {
        assert_eq!(resume_point(2, Some(3), 10), (2, None));
        assert_eq!(resume_point(2, Some(5), 10), (4, Some(5)));
        assert_eq!(resume_point(50, None, 10), (10, None));
        assert_eq!(resume_point(0, None, 0), (0, None));
    }
}
