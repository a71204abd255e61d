/* frame_loop: an application on the model's public C API (routevit_model.h), as a camera
 * product would call it: take a frame into a buffer, classify it, print the result.
 *
 *   routevit generate EXP --board mps2-an386 --out proj
 *   routevit build proj --app examples/frame_loop
 *   proj/qemu/run proj/build/app.elf stdio
 *
 * Only routevit_model.h and the board's UART/counter (board.h) are used: no protocol, no host.
 * camera_capture() stands in for a camera driver: it fills the frame with a test pattern that
 * tests/test_app.py reproduces on the host, so the printed classes can be checked against the
 * host reference. A product replaces it with its DMA / sensor code and loops forever.
 */
#include <stddef.h>
#include <stdint.h>

#include "board.h"
#include "routevit_model.h"

#ifndef FRAME_LOOP_FRAMES
#define FRAME_LOOP_FRAMES 4 /* frames to classify before stopping (0: forever) */
#endif
#define TOP_K 3

static uint8_t g_frame[ROUTEVIT_MODEL_INPUT_BYTES];

/* Frame `index`: pixel (y, x, c) = (x * (3 + index) + y * (5 + 2 * index) + 80 * c + 41 * index) mod 256. */
static void camera_capture(uint8_t* frame, uint32_t index) {
  size_t i = 0;
  for (uint32_t y = 0; y < ROUTEVIT_MODEL_INPUT_HEIGHT; ++y) {
    for (uint32_t x = 0; x < ROUTEVIT_MODEL_INPUT_WIDTH; ++x) {
      for (uint32_t c = 0; c < ROUTEVIT_MODEL_INPUT_CHANNELS; ++c) {
        frame[i++] = (uint8_t)((x * (3 + index) + y * (5 + 2 * index) + 80 * c + 41 * index) & 0xFFu);
      }
    }
  }
}

/* --- a few text helpers (newlib's printf would pull in syscalls and the heap) --- */
static void print(const char* text) {
  size_t n = 0;
  while (text[n] != '\0') ++n;
  uart_write((const uint8_t*)text, n);
}

static void print_int(int64_t value) {
  char digits[24];
  size_t n = 0;
  uint64_t magnitude = value < 0 ? (uint64_t)(-value) : (uint64_t)value;
  do {
    digits[n++] = (char)('0' + magnitude % 10u);
    magnitude /= 10u;
  } while (magnitude != 0u);
  if (value < 0) digits[n++] = '-';
  char text[24];
  for (size_t i = 0; i < n; ++i) text[i] = digits[n - 1 - i];
  text[n] = '\0';
  print(text);
}

int main(void) {
  uart_init();
  counter_init();
  if (routevit_model_init() != ROUTEVIT_STATUS_OK) {
    print("frame_loop: model init failed: ");
    print(routevit_model_error());
    print("\n");
    board_stop(1);
  }
  print("frame_loop: ");
  print_int(ROUTEVIT_MODEL_INPUT_HEIGHT);
  print("x");
  print_int(ROUTEVIT_MODEL_INPUT_WIDTH);
  print("x");
  print_int(ROUTEVIT_MODEL_INPUT_CHANNELS);
  print(" input, ");
  print_int(ROUTEVIT_MODEL_NUM_CLASSES);
  print(" classes, arena ");
  print_int((int64_t)routevit_model_arena_used());
  print(" of ");
  print_int(ROUTEVIT_MODEL_ARENA_BYTES);
  print(" bytes\n");

  for (uint32_t index = 0;; ++index) {
    if (FRAME_LOOP_FRAMES != 0 && index == FRAME_LOOP_FRAMES) break;
    camera_capture(g_frame, index);
    routevit_prediction top[TOP_K];
    const uint64_t start = counter_read();
    const routevit_status status = routevit_model_classify(g_frame, sizeof(g_frame), top, TOP_K);
    const uint64_t spent = counter_read() - start;
    print("frame ");
    print_int(index);
    if (status != ROUTEVIT_STATUS_OK) {
      print(": error ");
      print(routevit_model_error());
      print("\n");
      board_stop(2);
    }
    /* e.g. frame 0: 2 "norcar" 0.912 | 0 "amecro" 0.061 | 1 "blujay" 0.027 | 812345 instructions */
    print(":");
    const size_t shown = TOP_K < ROUTEVIT_MODEL_NUM_CLASSES ? TOP_K : ROUTEVIT_MODEL_NUM_CLASSES;
    for (size_t r = 0; r < shown; ++r) {
      const int32_t per_mille = (int32_t)(top[r].score * 1000.0f + 0.5f);
      print(r == 0 ? " " : " | ");
      print_int(top[r].label);
      print(" \"");
      print(routevit_model_class_name(top[r].label));
      print("\" logit ");
      print_int(top[r].logit);
      print(" score 0.");
      if (per_mille >= 1000) {
        print("999");  /* 1.000 after rounding: printed as 0.999 to keep the format fixed */
      } else {
        if (per_mille < 100) print("0");
        if (per_mille < 10) print("0");
        print_int(per_mille);
      }
    }
    print(" | ");
    print_int((int64_t)spent);
    print(counter_kind() == 0 ? " instructions" : " cycles");
    size_t experts = 0;
    const uint16_t* counts;
    for (size_t layer = 0; (counts = routevit_model_expert_counts(layer, &experts)) != NULL; ++layer) {
      print(layer == 0 ? " | experts" : " /");
      for (size_t e = 0; e < experts; ++e) {
        print(" ");
        print_int(counts[e]);
      }
    }
    print("\n");
  }
  print("frame_loop: done\n");
  board_stop(0);
}
