//! The paper-style text grid (a command-line contract).
//!
//! One line per stage, `S<k>:` with k from 1, then one token per slot from slot 0: a forward is
//! `<mini-batch><micro-batch letter>` (`3B` = mini-batch 3, micro-batch B), a backward of a whole
//! mini-batch is `B<mini-batch>`, a backward of one micro-batch `B<mini-batch><letter>`, the
//! further slots of a backward that takes several (a costed order,
//! [`ScheduleConfig::backward_slots`](crate::ScheduleConfig::backward_slots)) `-`, and an idle
//! slot `.`; mini-batches are 1-based here and only here. Updates take no slot and are not
//! shown. Tokens are right-aligned to a common width so that columns line up as in the spec's
//! grids; consumers should still compare ignoring repeated whitespace.
//!
//! The same code renders the window of a broken schedule in a validation error: a cell holding
//! two forwards or backwards shows them joined by `+`, and the failing cell is bracketed
//! (`[3A]`) with `<-- ERROR HERE: <reason>` after its row.

use std::fmt::Write as _;
use std::ops::Range;

use crate::action::ActionKind;
use crate::schedule::Schedule;

/// Renders `schedule` as a grid, cut after `max_slots` slots when given.
///
/// ```
/// use timeprest_schedule::{generate, render, ScheduleConfig, ScheduleKind};
///
/// let schedule = generate(ScheduleKind::Gpipe, &ScheduleConfig::new(2, 2, 1)).unwrap();
/// let expected = concat!(
///     "S1:   1A   1B    .    .  B1B  B1A\n",
///     "S2:    .   1A   1B  B1B  B1A    .\n",
/// );
/// assert_eq!(render::grid(&schedule, None), expected);
/// ```
pub fn grid(schedule: &Schedule, max_slots: Option<u32>) -> String {
    let num_slots = schedule.num_slots();
    let end = max_slots.map_or(num_slots, |max| max.min(num_slots));
    grid_window(schedule, 0..end, None)
}

/// The grid token of an action: `3B`, `B3`, `B3A`; `None` for an update (it has no cell).
pub fn grid_token(kind: ActionKind) -> Option<String> {
    match kind {
        ActionKind::Forward(mb) => Some(format!(
            "{}{}",
            mb.minibatch + 1,
            microbatch_letters(mb.microbatch)
        )),
        ActionKind::BackwardMinibatch(i) => Some(format!("B{}", i + 1)),
        ActionKind::BackwardMicrobatch(mb) => Some(format!(
            "B{}{}",
            mb.minibatch + 1,
            microbatch_letters(mb.microbatch)
        )),
        ActionKind::Update(_) => None,
    }
}

/// The letters of 0-based micro-batch `microbatch`: `A`..`Z`, then `AA`, `AB`, … (bijective
/// base 26, like spreadsheet columns) so that N > 26 still renders unambiguously.
pub fn microbatch_letters(microbatch: u32) -> String {
    let mut letters = Vec::new();
    let mut rest = u64::from(microbatch) + 1;
    while rest > 0 {
        rest -= 1;
        letters.push(b'A' + (rest % 26) as u8);
        rest /= 26;
    }
    letters.iter().rev().map(|&b| char::from(b)).collect()
}

/// The cell of a grid to mark, and why.
pub(crate) struct Mark<'a> {
    /// The row (stage) to mark.
    pub(crate) row: usize,
    /// The slot whose cell gets brackets; `None` marks the row only.
    pub(crate) slot: Option<u32>,
    /// Printed after the row.
    pub(crate) reason: &'a str,
}

/// Renders the slots `slots` of `schedule`'s rows (one per stage), marking `mark` if given.
pub(crate) fn grid_window(
    schedule: &Schedule,
    slots: Range<u32>,
    mark: Option<&Mark<'_>>,
) -> String {
    let rows = &schedule.stages;
    let width = slots.len();
    let mut cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            let mut cells = vec![String::new(); width];
            for scheduled in row {
                let end = (scheduled.slot)
                    .saturating_add(schedule.config.duration(scheduled.action.kind));
                for busy in (scheduled.slot + 1..end).filter(|t| slots.contains(t)) {
                    let cell = &mut cells[(busy - slots.start) as usize];
                    if cell.is_empty() {
                        cell.push('-');
                    }
                }
            }
            for scheduled in row.iter().filter(|s| slots.contains(&s.slot)) {
                let Some(token) = grid_token(scheduled.action.kind) else {
                    continue;
                };
                let cell = &mut cells[(scheduled.slot - slots.start) as usize];
                if !cell.is_empty() {
                    cell.push('+');
                }
                cell.push_str(&token);
            }
            cells
                .into_iter()
                .map(|c| if c.is_empty() { ".".to_string() } else { c })
                .collect()
        })
        .collect();
    if let Some(Mark {
        row,
        slot: Some(slot),
        ..
    }) = mark
        && let Some(cell) = cells
            .get_mut(*row)
            .and_then(|r| r.get_mut(slot.wrapping_sub(slots.start) as usize))
    {
        *cell = format!("[{cell}]");
    }
    let token_width = cells.iter().flatten().map(String::len).max().unwrap_or(1);
    let label_width = format!("S{}:", rows.len()).len();
    let mut out = String::new();
    for (s, row) in cells.iter().enumerate() {
        let label = format!("S{}:", s + 1);
        write!(out, "{label:<label_width$}").unwrap();
        for cell in row {
            write!(out, "  {cell:>token_width$}").unwrap();
        }
        if let Some(mark) = mark.filter(|m| m.row == s) {
            write!(out, "  <-- ERROR HERE: {}", mark.reason).unwrap();
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::Action;
    use crate::schedule::{ScheduleConfig, ScheduleKind, ScheduledAction};

    #[test]
    fn tokens_are_one_based_with_microbatch_letters() {
        assert_eq!(grid_token(Action::forward(0, 2, 1).kind).unwrap(), "3B");
        assert_eq!(grid_token(Action::backward(0, 2).kind).unwrap(), "B3");
        assert_eq!(
            grid_token(Action::backward_microbatch(0, 2, 0).kind).unwrap(),
            "B3A"
        );
        assert_eq!(grid_token(Action::update(0, 2).kind), None);
    }

    #[test]
    fn microbatch_letters_continue_past_z() {
        let letters: Vec<_> = [0, 25, 26, 27, 51, 52, 701, 702]
            .map(microbatch_letters)
            .into();
        assert_eq!(letters, ["A", "Z", "AA", "AB", "AZ", "BA", "ZZ", "AAA"]);
    }

    #[test]
    fn a_backward_of_several_slots_shows_dashes_after_its_token() {
        let config = ScheduleConfig {
            backward_slots: Some(1),
            ..ScheduleConfig::new(2, 2, 2)
        };
        let schedule = crate::generate(ScheduleKind::Nf1b, &config).unwrap();
        let text = grid(&schedule, None);
        assert_eq!(
            text,
            concat!(
                "S1:  1A  1B  2A  2B   .  B1   -   .   .  B2   -\n",
                "S2:   .  1A  1B  B1   -  2A  2B  B2   -   .   .\n",
            )
        );
    }

    #[test]
    fn a_marked_cell_is_bracketed_and_its_row_says_why() {
        let at = |action, slot| ScheduledAction { action, slot };
        let rows = vec![
            vec![
                at(Action::forward(0, 0, 0), 0),
                at(Action::forward(0, 1, 0), 1),
            ],
            vec![at(Action::forward(1, 0, 0), 1)],
        ];
        let mark = Mark {
            row: 1,
            slot: Some(1),
            reason: "just because",
        };
        let schedule = Schedule {
            kind: ScheduleKind::Gpipe,
            config: ScheduleConfig::new(2, 1, 2),
            stages: rows,
        };
        let text = grid_window(&schedule, 0..2, Some(&mark));
        assert_eq!(
            text,
            "S1:    1A    2A\nS2:     .  [1A]  <-- ERROR HERE: just because\n"
        );
    }
}
