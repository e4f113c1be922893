//! `defect-agent demo`, the README's first command: it needs no broker installed, decides every
//! sample frame, and ends with its summary.

use defect_e2e::{run, stderr, stdout};

#[test]
fn the_demo_decides_every_sample_frame_with_its_embedded_broker() {
    let out = run("defect-agent", &["demo", "--timeout", "120"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(
        text.contains("summary: 30 frames, 30 decisions received"),
        "{text}"
    );
    assert!(text.contains("0 no decision"), "{text}");
    assert!(
        text.contains("agreement with the sample labels: pass/reject 30/30, class 30/30"),
        "{text}"
    );
}
